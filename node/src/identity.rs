//! The identity a node persists at first start and checks at every later start, so a data
//! directory is never reused by another cluster, group or node by mistake.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: String,
    pub group_id: u64,
    pub node_id: u64,
    pub shards: u32,
}

const FILE: &str = "identity.json";
/// Written when the node sees itself removed from its group's membership.
const LEFT_FILE: &str = "left.json";

/// The record of a node removed from its group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    /// Log index of the membership that no longer lists the node.
    pub membership_index: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "data dir {dir} belongs to cluster {:?} (group {}, node {}, {} shards), but this node was started as cluster {:?} (group {}, node {}, {} shards); refusing to start. Point --data-dir at this node's own directory, or at an empty one for a new node",
        found.cluster_id, found.group_id, found.node_id, found.shards, wanted.cluster_id, wanted.group_id, wanted.node_id, wanted.shards
    )]
    Mismatch { dir: String, found: Identity, wanted: Identity },
    #[error("reading or writing {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is damaged ({source}); refusing to guess this node's identity")]
    Corrupt { path: String, source: serde_json::Error },
    #[error(
        "node {} was removed from group {} of cluster {:?} (membership at log index {}) and does not rejoin by itself; to add this pod again, give it an empty data dir so it joins as a new member",
        identity.node_id, identity.group_id, identity.cluster_id, left.membership_index
    )]
    HasLeft { identity: Identity, left: Left },
}

/// Records `wanted` in a fresh data dir, or checks that an existing one matches it.
pub fn ensure(dir: &Path, wanted: &Identity) -> Result<(), IdentityError> {
    let path = dir.join(FILE);
    let io = |source| IdentityError::Io { path: path.display().to_string(), source };
    fs::create_dir_all(dir).map_err(io)?;
    match fs::read(&path) {
        Ok(bytes) => {
            let found: Identity = serde_json::from_slice(&bytes)
                .map_err(|source| IdentityError::Corrupt { path: path.display().to_string(), source })?;
            if &found != wanted {
                return Err(IdentityError::Mismatch { dir: dir.display().to_string(), found, wanted: wanted.clone() });
            }
            match read_json::<Left>(&dir.join(LEFT_FILE))? {
                Some(left) => Err(IdentityError::HasLeft { identity: found, left }),
                None => Ok(()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_json(dir, FILE, wanted),
        Err(e) => Err(io(e)),
    }
}

/// Records that this node was removed from its group, so it never rejoins by itself.
pub fn record_left(dir: &Path, left: &Left) -> Result<(), IdentityError> {
    write_json(dir, LEFT_FILE, left)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, IdentityError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| IdentityError::Corrupt { path: path.display().to_string(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Io { path: path.display().to_string(), source }),
    }
}

/// Writes `value` as `dir/name` atomically and durably.
fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), IdentityError> {
    let path = dir.join(name);
    let io = |source| IdentityError::Io { path: path.display().to_string(), source };
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = fs::File::create(&tmp).map_err(io)?;
    file.write_all(&serde_json::to_vec_pretty(value).expect("plain data serializes")).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, &path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cluster: &str, node: u64) -> Identity {
        Identity { cluster_id: cluster.into(), group_id: 0, node_id: node, shards: 64 }
    }

    #[test]
    fn first_start_records_and_later_starts_accept_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &id("a", 1)).unwrap();
        ensure(dir.path(), &id("a", 1)).unwrap();
    }

    #[test]
    fn another_cluster_or_node_is_refused_with_both_identities_named() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &id("a", 1)).unwrap();
        let err = ensure(dir.path(), &id("b", 1)).unwrap_err().to_string();
        assert!(err.contains("belongs to cluster \"a\"") && err.contains("started as cluster \"b\""), "{err}");
        assert!(ensure(dir.path(), &id("a", 2)).is_err());
    }

    #[test]
    fn a_node_that_left_refuses_to_start_again() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &id("a", 3)).unwrap();
        record_left(dir.path(), &Left { membership_index: 42 }).unwrap();
        let err = ensure(dir.path(), &id("a", 3)).unwrap_err().to_string();
        assert!(err.contains("node 3 was removed from group 0") && err.contains("log index 42"), "{err}");
    }
}
