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
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = dir.join(format!("{FILE}.tmp"));
            let mut file = fs::File::create(&tmp).map_err(io)?;
            file.write_all(&serde_json::to_vec_pretty(wanted).expect("identity serializes")).map_err(io)?;
            file.sync_all().map_err(io)?;
            fs::rename(&tmp, &path).map_err(io)?;
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
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
}
