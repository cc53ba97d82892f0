//! Which TLS files the CLI uses: --ca/--cert/--key (or SHARDKV_CA/_CERT/_KEY), else the
//! `tls.json` beside an --endpoints-file (a TLS playground writes one), else none.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use shardkv_client::TlsFiles;

/// The file naming the TLS files to use with the endpoints file beside it.
pub const TLS_JSON: &str = "tls.json";

/// `tls.json`: paths relative to its own directory, or absolute.
#[derive(Serialize, Deserialize)]
struct Beside {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

pub fn resolve(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    endpoints_file: Option<&Path>,
) -> anyhow::Result<Option<TlsFiles>> {
    if ca.is_some() || cert.is_some() || key.is_some() {
        return TlsFiles::from_parts(ca, cert, key).map_err(|e| anyhow::anyhow!("--ca, --cert, --key: {e}"));
    }
    let Some(dir) = endpoints_file.map(|file| file.parent().unwrap_or(Path::new(""))) else {
        return Ok(None);
    };
    let path = dir.join(TLS_JSON);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let beside: Beside = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(Some(TlsFiles { ca: dir.join(beside.ca), cert: dir.join(beside.cert), key: dir.join(beside.key) }))
}

/// Writes `dir/tls.json` naming `files` (relative to `dir` where they are inside it).
pub fn write_beside(dir: &Path, files: &TlsFiles) -> anyhow::Result<()> {
    let relative = |path: &Path| path.strip_prefix(dir).unwrap_or(path).to_path_buf();
    let beside = Beside { ca: relative(&files.ca), cert: relative(&files.cert), key: relative(&files.key) };
    let path = dir.join(TLS_JSON);
    std::fs::write(&path, serde_json::to_string_pretty(&beside)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_then_the_file_beside_the_endpoints_then_none() {
        let dir = tempfile::tempdir().unwrap();
        let endpoints = dir.path().join("endpoints");
        assert!(resolve(None, None, None, Some(&endpoints)).unwrap().is_none());
        let files = TlsFiles {
            ca: dir.path().join("tls/ca.pem"),
            cert: dir.path().join("tls/admin.pem"),
            key: dir.path().join("tls/admin-key.pem"),
        };
        write_beside(dir.path(), &files).unwrap();
        assert_eq!(resolve(None, None, None, Some(&endpoints)).unwrap(), Some(files));
        let flags = resolve(Some("a".into()), Some("b".into()), Some("c".into()), Some(&endpoints)).unwrap().unwrap();
        assert_eq!(flags.ca, PathBuf::from("a"));
        assert!(resolve(Some("a".into()), None, None, None).is_err());
    }
}
