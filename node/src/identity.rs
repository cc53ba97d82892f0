//! The identity a node persists at first start and checks at every later start, so a data
//! directory is never reused by another cluster, group or node by mistake; and what becomes of
//! the data dir of a node removed from its group.

use std::ffi::OsStr;
use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

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
/// `removed-<membership index>`: the state of a removed node that started again as a new
/// member (`--rejoin-after-removal`).
const ASIDE_PREFIX: &str = "removed-";
/// Entries of the data dir never moved aside: the identity (the node starts again as itself)
/// and a file system's `lost+found` (the data dir is often the root of a volume).
const KEPT: [&str; 2] = [FILE, "lost+found"];

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
        "node {} was removed from group {} of cluster {:?} (membership at log index {}) and does not rejoin by itself; to add this pod again, give it an empty data dir, or start it with --rejoin-after-removal (SHARDKV_REJOIN_AFTER_REMOVAL=true) to move its old state aside, so it joins as a new member",
        identity.node_id, identity.group_id, identity.cluster_id, left.membership_index
    )]
    HasLeft { identity: Identity, left: Left },
}

/// The old state of a removed node, moved aside so it starts again as a new member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedAside {
    /// The removal that the node confirmed (its `left.json`, now in `aside`).
    pub left: Left,
    /// The directory that now holds the old state: `<data dir>/removed-<membership index>`.
    pub aside: PathBuf,
    /// Names of the entries moved there (the RocksDB dir, snapshots, `left.json`, ...).
    pub moved: Vec<String>,
    /// Older aside copies deleted, so at most one is kept.
    pub deleted: Vec<PathBuf>,
}

/// Records `wanted` in a fresh data dir, or checks that an existing one matches it.
///
/// A data dir whose node was removed from its group (`left.json`) is refused with
/// [`IdentityError::HasLeft`]; with `rejoin_after_removal` (`--rejoin-after-removal`) its state
/// is moved aside instead (`move_aside`) and the node starts as a new, uninitialised member
/// with the same identity.
pub fn ensure(dir: &Path, wanted: &Identity, rejoin_after_removal: bool) -> Result<Option<MovedAside>, IdentityError> {
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
                Some(left) if rejoin_after_removal => move_aside(dir, &left).map(Some),
                Some(left) => Err(IdentityError::HasLeft { identity: found, left }),
                None => Ok(None),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_json(dir, FILE, wanted).map(|()| None),
        Err(e) => Err(io(e)),
    }
}

/// Moves the state of a removed node (everything in `dir` but its identity) into
/// `dir/removed-<membership index>`, deleting any older `removed-*` copy, so the node starts
/// empty: no log, no vote, no snapshot, not initialised.
///
/// Safe because `left.json` is written only after the node confirmed with its group's leader
/// that the committed membership no longer lists it (`lifecycle/removal.rs`): the group never
/// needs its old log or vote again, and starting empty is what a brand-new pod does. It joins
/// only when it is added again as a learner.
///
/// `left.json` moves last, so a start interrupted half-way finds it still there and finishes
/// the move into the same directory.
fn move_aside(dir: &Path, left: &Left) -> Result<MovedAside, IdentityError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| IdentityError::Io { path, source }
    };
    let name = OsString::from(format!("{ASIDE_PREFIX}{}", left.membership_index));
    let aside = dir.join(&name);
    let mut entries: Vec<OsString> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        entries.push(entry.map_err(io(dir))?.file_name());
    }
    entries.sort();

    let mut deleted = Vec::new();
    for entry in entries.iter().filter(|e| **e != name && is_aside(e)) {
        let path = dir.join(entry);
        let is_dir = fs::symlink_metadata(&path).map_err(io(&path))?.is_dir();
        if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) }.map_err(io(&path))?;
        deleted.push(path);
    }
    fs::create_dir_all(&aside).map_err(io(&aside))?;
    let mut moved = Vec::new();
    let rest =
        entries.iter().filter(|e| **e != name && *e != LEFT_FILE && !is_aside(e) && !KEPT.iter().any(|k| e == k));
    for entry in rest {
        let from = dir.join(entry);
        fs::rename(&from, aside.join(entry)).map_err(io(&from))?;
        moved.push(entry.to_string_lossy().into_owned());
    }
    // A copy of the identity, so the aside directory says whose state it holds.
    fs::copy(dir.join(FILE), aside.join(FILE)).map_err(io(&aside.join(FILE)))?;
    sync_dir(&aside)?;
    sync_dir(dir)?;
    fs::rename(dir.join(LEFT_FILE), aside.join(LEFT_FILE)).map_err(io(&dir.join(LEFT_FILE)))?;
    moved.push(LEFT_FILE.to_string());
    sync_dir(&aside)?;
    sync_dir(dir)?;
    Ok(MovedAside { left: left.clone(), aside, moved, deleted })
}

/// `removed-<digits>`: an aside copy of a removed node's state.
fn is_aside(name: &OsStr) -> bool {
    name.to_str()
        .and_then(|n| n.strip_prefix(ASIDE_PREFIX))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| IdentityError::Io { path: dir.display().to_string(), source })
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

    /// Sorted names of the entries of `dir`.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// A data dir of node 3 with some state: a RocksDB dir, a snapshot and a lost+found.
    fn node_with_state(dir: &Path, state: &str) {
        ensure(dir, &id("a", 3), false).unwrap();
        for (sub, file) in [("db", "CURRENT"), ("snapshots", "snap-1"), ("lost+found", "x")] {
            fs::create_dir_all(dir.join(sub)).unwrap();
            fs::write(dir.join(sub).join(file), state).unwrap();
        }
    }

    #[test]
    fn first_start_records_and_later_starts_accept_the_same_identity() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ensure(dir.path(), &id("a", 1), false).unwrap(), None);
        assert_eq!(ensure(dir.path(), &id("a", 1), false).unwrap(), None);
    }

    #[test]
    fn another_cluster_or_node_is_refused_with_both_identities_named() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), &id("a", 1), false).unwrap();
        let err = ensure(dir.path(), &id("b", 1), false).unwrap_err().to_string();
        assert!(err.contains("belongs to cluster \"a\"") && err.contains("started as cluster \"b\""), "{err}");
        assert!(ensure(dir.path(), &id("a", 2), false).is_err());
    }

    #[test]
    fn a_node_that_left_refuses_to_start_again() {
        let dir = tempfile::tempdir().unwrap();
        node_with_state(dir.path(), "old");
        record_left(dir.path(), &Left { membership_index: 42 }).unwrap();
        let err = ensure(dir.path(), &id("a", 3), false).unwrap_err().to_string();
        assert!(err.contains("node 3 was removed from group 0") && err.contains("log index 42"), "{err}");
        assert!(err.contains("--rejoin-after-removal"), "the refusal names the way out: {err}");
        assert_eq!(names(dir.path()), ["db", "identity.json", "left.json", "lost+found", "snapshots"], "nothing moved");
    }

    #[test]
    fn with_rejoin_after_removal_a_node_that_left_moves_its_state_aside_and_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        node_with_state(dir.path(), "old");
        record_left(dir.path(), &Left { membership_index: 42 }).unwrap();

        let moved = ensure(dir.path(), &id("a", 3), true).unwrap().expect("the old state moved aside");
        let aside = dir.path().join("removed-42");
        let expected = MovedAside {
            left: Left { membership_index: 42 },
            aside: aside.clone(),
            moved: vec!["db".into(), "snapshots".into(), "left.json".into()],
            deleted: vec![],
        };
        assert_eq!(moved, expected);
        assert_eq!(names(dir.path()), ["identity.json", "lost+found", "removed-42"], "a fresh data dir");
        assert_eq!(names(&aside), ["db", "identity.json", "left.json", "snapshots"]);
        assert_eq!(fs::read_to_string(aside.join("db/CURRENT")).unwrap(), "old");
        assert_eq!(fs::read_to_string(dir.path().join("lost+found/x")).unwrap(), "old", "lost+found stays");
        // The same identity, accepted at the next start with or without the flag.
        assert_eq!(ensure(dir.path(), &id("a", 3), true).unwrap(), None);
        assert_eq!(ensure(dir.path(), &id("a", 3), false).unwrap(), None);
        assert!(ensure(dir.path(), &id("a", 4), true).is_err(), "the identity is still checked");
    }

    #[test]
    fn a_second_removal_replaces_the_older_aside_copy() {
        let dir = tempfile::tempdir().unwrap();
        node_with_state(dir.path(), "first");
        record_left(dir.path(), &Left { membership_index: 42 }).unwrap();
        ensure(dir.path(), &id("a", 3), true).unwrap().unwrap();

        node_with_state(dir.path(), "second");
        record_left(dir.path(), &Left { membership_index: 77 }).unwrap();
        let moved = ensure(dir.path(), &id("a", 3), true).unwrap().unwrap();
        assert_eq!(moved.deleted, [dir.path().join("removed-42")]);
        assert_eq!(names(dir.path()), ["identity.json", "lost+found", "removed-77"], "one aside copy at most");
        assert_eq!(fs::read_to_string(dir.path().join("removed-77/db/CURRENT")).unwrap(), "second");
    }

    #[test]
    fn an_interrupted_move_is_finished_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        node_with_state(dir.path(), "old");
        record_left(dir.path(), &Left { membership_index: 42 }).unwrap();
        // The first attempt moved the RocksDB dir, then the node died.
        fs::create_dir(dir.path().join("removed-42")).unwrap();
        fs::rename(dir.path().join("db"), dir.path().join("removed-42/db")).unwrap();

        let moved = ensure(dir.path(), &id("a", 3), true).unwrap().unwrap();
        assert_eq!(moved.moved, ["snapshots", "left.json"]);
        assert!(moved.deleted.is_empty(), "the copy being filled is kept");
        assert_eq!(names(dir.path()), ["identity.json", "lost+found", "removed-42"]);
        assert_eq!(names(&dir.path().join("removed-42")), ["db", "identity.json", "left.json", "snapshots"]);
    }

    #[test]
    fn without_left_json_or_with_another_identity_nothing_moves() {
        let dir = tempfile::tempdir().unwrap();
        node_with_state(dir.path(), "live");
        fs::create_dir(dir.path().join("removed-9")).unwrap();
        assert_eq!(ensure(dir.path(), &id("a", 3), true).unwrap(), None, "a member that never left");
        assert_eq!(names(dir.path()), ["db", "identity.json", "lost+found", "removed-9", "snapshots"]);

        record_left(dir.path(), &Left { membership_index: 42 }).unwrap();
        let err = ensure(dir.path(), &id("b", 3), true).unwrap_err();
        assert!(matches!(err, IdentityError::Mismatch { .. }), "{err}");
        assert!(dir.path().join("db/CURRENT").exists() && dir.path().join("left.json").exists());
    }

    #[test]
    fn only_removed_and_digits_name_an_aside_copy() {
        let aside = |name: &str| is_aside(OsStr::new(name));
        assert!(aside("removed-1") && aside("removed-1234"));
        assert!(!aside("removed-") && !aside("removed-1x") && !aside("removed") && !aside("db"));
    }
}
