//! Applying committed commands: reads see earlier writes of the same batch through an
//! overlay, and everything a batch changes lands in one RocksDB WriteBatch.

use std::collections::HashMap;
use std::io;

use rocksdb::DB;
use rocksdb::WriteBatch;

use super::session::Dedup;
use super::session::Session;
use crate::storage::CF_DATA;
use crate::storage::CF_SESSIONS;
use crate::storage::cf;
use crate::storage::io_err;
use crate::storage::keys::data_key;
use crate::storage::keys::session_key;
use crate::types::Command;
use crate::types::Op;
use crate::types::OpResult;
use crate::types::decode;
use crate::types::encode;

pub struct ApplyBatch<'a> {
    db: &'a DB,
    batch: WriteBatch,
    data: HashMap<Vec<u8>, Option<Vec<u8>>>,
    sessions: HashMap<[u8; 12], Session>,
}

impl<'a> ApplyBatch<'a> {
    pub fn new(db: &'a DB) -> Self {
        Self { db, batch: WriteBatch::default(), data: HashMap::new(), sessions: HashMap::new() }
    }

    pub fn apply(&mut self, cmd: &Command) -> io::Result<OpResult> {
        let Some(tag) = cmd.session else {
            return self.execute(cmd);
        };
        let key = session_key(cmd.shard, tag.client_id);
        let mut session = self.session(&key)?;
        match session.check(tag.seq) {
            Dedup::Duplicate(result) => return Ok(result),
            Dedup::Expired => return Ok(OpResult::SessionExpired),
            Dedup::Fresh => {}
        }
        let result = self.execute(cmd)?;
        session.record(tag.seq, tag.first_unacked, result.clone());
        self.batch.put_cf(cf(self.db, CF_SESSIONS), key, encode(&session));
        self.sessions.insert(key, session);
        Ok(result)
    }

    /// The batch to write, together with whatever metadata the caller adds.
    pub fn into_write_batch(self) -> WriteBatch {
        self.batch
    }

    pub fn batch_mut(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    fn execute(&mut self, cmd: &Command) -> io::Result<OpResult> {
        let key = data_key(cmd.shard, cmd.op.key());
        Ok(match &cmd.op {
            Op::Put { value, .. } => {
                self.write(key, Some(value.clone()));
                OpResult::Put
            }
            Op::Delete { .. } => {
                let existed = self.read(&key)?.is_some();
                if existed {
                    self.write(key, None);
                }
                OpResult::Delete { existed }
            }
            Op::CompareAndSwap { expected, new_value, .. } => {
                let previous = self.read(&key)?;
                let succeeded = previous == *expected;
                if succeeded {
                    self.write(key, Some(new_value.clone()));
                }
                OpResult::CompareAndSwap { succeeded, previous }
            }
        })
    }

    fn read(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self.data.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => self.db.get_cf(cf(self.db, CF_DATA), key).map_err(io_err),
        }
    }

    fn write(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let data_cf = cf(self.db, CF_DATA);
        match &value {
            Some(v) => self.batch.put_cf(data_cf, &key, v),
            None => self.batch.delete_cf(data_cf, &key),
        }
        self.data.insert(key, value);
    }

    fn session(&self, key: &[u8; 12]) -> io::Result<Session> {
        if let Some(s) = self.sessions.get(key) {
            return Ok(s.clone());
        }
        match self.db.get_cf(cf(self.db, CF_SESSIONS), key).map_err(io_err)? {
            Some(bytes) => decode(&bytes),
            None => Ok(Session::default()),
        }
    }
}
