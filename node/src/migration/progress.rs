//! How far the pulls this replica leads have come, for status. Kept apart from the driver that
//! updates it so that the node context, which every handler shares, does not depend on the
//! driver, which depends on the context.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;

use crate::types::ShardId;

/// Items and bytes received so far by the pulls this replica leads, by shard.
#[derive(Clone, Default)]
pub struct MoveProgress(Arc<Mutex<BTreeMap<ShardId, Progress>>>);

#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub items: u64,
    pub bytes: u64,
}

impl MoveProgress {
    pub fn snapshot(&self) -> BTreeMap<ShardId, Progress> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ShardId, Progress>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn add(&self, shard: ShardId, items: u64, bytes: u64) {
        let mut map = self.lock();
        let entry = map.entry(shard).or_default();
        entry.items += items;
        entry.bytes += bytes;
    }

    pub(super) fn clear(&self, shard: ShardId) {
        self.lock().remove(&shard);
    }
}
