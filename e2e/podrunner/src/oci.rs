//! Containers from OCI images, as a container runtime runs them.
//!
//! `--oci-image NAME=LAYOUT[:REF]` names an OCI image layout (what `buildah
//! push IMAGE oci:LAYOUT:REF` or `skopeo copy` writes). At start the runner
//! reads the manifest and the image config from the layout, and unpacks the
//! layers once with `umoci raw unpack` into its work directory. A container of
//! NAME then runs in that root file system (an overlay per container start
//! over the unpacked image, so the image stays as it was pulled), with the
//! config's Entrypoint, Cmd, Env, WorkingDir and User applied by the
//! Kubernetes rules: `command` replaces Entrypoint (and Cmd), `args` replace
//! Cmd, the container's env overrides the image's, runAsUser/runAsGroup
//! override User.
//!
//! The last step, from the host into the container's root, is
//! `podrunner container-exec` (this binary): chroot, working directory,
//! groups, gid, uid, no_new_privs, then exec with the container's PATH.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The argument that makes `podrunner` the exec helper.
pub const EXEC_HELPER: &str = "container-exec";

const INDEX_MEDIA_TYPES: [&str; 2] =
    ["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];

/// What a container of an image needs from the image config (`config` of
/// the OCI image configuration).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE`, in order.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl ImageConfig {
    /// From the image configuration JSON (its `config` object).
    pub fn from_json(image_config: &Value) -> ImageConfig {
        let c = &image_config["config"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()).unwrap_or_default()
        };
        ImageConfig {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
            user: c["User"].as_str().unwrap_or_default().to_string(),
        }
    }
}

/// An image the runner can start containers of.
#[derive(Debug)]
pub struct OciImage {
    /// `LAYOUT[:REF]` as given.
    pub source: String,
    /// The manifest's digest (`sha256:...`): the image's identity.
    pub digest: String,
    pub config: ImageConfig,
    /// The unpacked layers (never written: each container gets an overlay).
    pub rootfs: PathBuf,
}

/// Parses `NAME=LAYOUT[:REF]` (the name may hold `:` itself, as in `x:tag`).
pub fn parse_spec(s: &str) -> Result<(String, PathBuf, Option<String>), String> {
    let (name, rest) = s.split_once('=').ok_or("expected NAME=OCI_LAYOUT_DIR[:REF]")?;
    if name.is_empty() {
        return Err("empty image name".into());
    }
    // A `:REF` suffix only when what follows the last ':' is not a path and
    // what precedes it is a layout (a directory with index.json).
    let (layout, reference) = match rest.rsplit_once(':') {
        Some((dir, r)) if !r.is_empty() && !r.contains('/') && Path::new(dir).join("index.json").is_file() => {
            (dir, Some(r.to_string()))
        }
        _ => (rest, None),
    };
    let layout = std::fs::canonicalize(layout).map_err(|e| format!("{layout}: {e}"))?;
    if !layout.join("index.json").is_file() {
        return Err(format!("{} is not an OCI image layout (no index.json)", layout.display()));
    }
    Ok((name.to_string(), layout, reference))
}

fn read_blob(layout: &Path, digest: &str) -> Result<Value> {
    let hex = digest.strip_prefix("sha256:").with_context(|| format!("unsupported digest {digest}"))?;
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("malformed digest {digest}");
    }
    let path = layout.join("blobs/sha256").join(hex);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The manifest of `reference` in the layout (the only one when `None`),
/// through an image index if need be (linux/amd64): (digest, manifest).
pub fn resolve_manifest(layout: &Path, reference: Option<&str>) -> Result<(String, Value)> {
    let index_path = layout.join("index.json");
    let index: Value = serde_json::from_slice(
        &std::fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?,
    )
    .with_context(|| format!("parsing {}", index_path.display()))?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let ref_name = |m: &Value| m["annotations"]["org.opencontainers.image.ref.name"].as_str().map(str::to_string);
    let chosen = match reference {
        Some(r) => manifests.iter().find(|m| ref_name(m).as_deref() == Some(r)).with_context(|| {
            format!(
                "{} has no image {r:?} (it has {:?})",
                layout.display(),
                manifests.iter().filter_map(ref_name).collect::<Vec<_>>()
            )
        })?,
        None if manifests.len() == 1 => &manifests[0],
        None => bail!("{} holds {} images: name one (LAYOUT:REF)", layout.display(), manifests.len()),
    };
    let mut digest = chosen["digest"].as_str().context("manifest descriptor without digest")?.to_string();
    let mut manifest = read_blob(layout, &digest)?;
    let media_type = |v: &Value, d: &Value| v["mediaType"].as_str().or(d["mediaType"].as_str()).map(str::to_string);
    if media_type(&manifest, chosen).is_some_and(|t| INDEX_MEDIA_TYPES.contains(&t.as_str())) {
        let platform = manifest["manifests"]
            .as_array()
            .and_then(|ms| {
                ms.iter().find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
            })
            .cloned()
            .context("the image index has no linux/amd64 manifest")?;
        digest = platform["digest"].as_str().context("manifest descriptor without digest")?.to_string();
        manifest = read_blob(layout, &digest)?;
    }
    Ok((digest, manifest))
}

/// The ref name of a layout's only image.
fn only_ref(layout: &Path) -> Result<String> {
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("the image in {} has no ref name: give LAYOUT:REF", layout.display()))
}

/// Reads the image of `LAYOUT[:REF]` and unpacks it under `images_dir`
/// (once per manifest digest: a directory already unpacked is reused).
pub async fn load(layout: &Path, reference: Option<&str>, images_dir: &Path) -> Result<OciImage> {
    let source = match reference {
        Some(r) => format!("{}:{r}", layout.display()),
        None => layout.display().to_string(),
    };
    let (digest, manifest) = resolve_manifest(layout, reference).with_context(|| format!("image {source}"))?;
    let config_digest = manifest["config"]["digest"].as_str().context("manifest without config")?;
    let config = ImageConfig::from_json(&read_blob(layout, config_digest)?);
    let dir = images_dir.join(digest.replace(':', "-"));
    let rootfs = dir.join("rootfs");
    let done = dir.join("unpacked");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // umoci names an image by its ref: the given one, else the only one's.
        let tagged = match reference {
            Some(r) => r.to_string(),
            None => only_ref(layout)?,
        };
        let out = tokio::process::Command::new("umoci")
            .args(["raw", "unpack", "--image"])
            .arg(format!("{}:{tagged}", layout.display()))
            .arg(&rootfs)
            .output()
            .await
            .context("running umoci (scripts/image.sh installs it)")?;
        if !out.status.success() {
            bail!("umoci raw unpack {source}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        std::fs::write(&done, &digest)?;
    }
    Ok(OciImage { source, digest, config, rootfs })
}

/// The process arguments of a container, by the Kubernetes rules: a
/// `command` replaces the image's Entrypoint and Cmd; `args` alone replace Cmd.
pub fn argv(image: &ImageConfig, command: &[String], args: &[String]) -> Result<Vec<String>> {
    let argv: Vec<String> = if !command.is_empty() {
        command.iter().chain(args).cloned().collect()
    } else if !args.is_empty() {
        image.entrypoint.iter().chain(args).cloned().collect()
    } else {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    };
    if argv.is_empty() {
        bail!("no command: the container has none and the image has neither Entrypoint nor Cmd");
    }
    Ok(argv)
}

/// The image's Env with the container's variables on top.
pub fn env(image: &ImageConfig, container: BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = image
        .env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    env.extend(container);
    env
}

/// `/etc/passwd` or `/etc/group` entries: (name, id, primary gid for passwd).
fn db_entries(content: &str) -> impl Iterator<Item = (&str, u32, Option<u32>)> {
    content.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let id = f.get(2)?.parse().ok()?;
        Some((f[0], id, f.get(3).and_then(|g| g.parse().ok())))
    })
}

/// The container's user and group: runAsUser/runAsGroup, else the image's
/// `User` (`uid`, `name`, `uid:gid`, `name:group`), resolved with the image's
/// /etc/passwd and /etc/group (`passwd`, `group`: their content). Without a
/// group, the user's primary group, else 0 (as runc). runAsNonRoot is checked
/// the kubelet's way: a name cannot be verified to be non-root.
pub fn user(
    image_user: &str,
    run_as_user: Option<i64>,
    run_as_group: Option<i64>,
    run_as_non_root: bool,
    passwd: &str,
    group: &str,
) -> Result<(u32, u32)> {
    let id = |v: i64, what: &str| u32::try_from(v).with_context(|| format!("{what} {v} out of range"));
    let primary = |uid: u32| db_entries(passwd).find(|e| e.1 == uid).and_then(|e| e.2);
    let (uid, gid) = if let Some(u) = run_as_user {
        let uid = id(u, "runAsUser")?;
        (uid, primary(uid).unwrap_or(0))
    } else {
        let (u, g) = match image_user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (image_user, None),
        };
        let (uid, primary_gid) = if u.is_empty() {
            (0, Some(0))
        } else if let Ok(uid) = u.parse::<u32>() {
            if run_as_non_root && uid == 0 {
                bail!("runAsNonRoot: the image runs as root (User {image_user:?}) and no runAsUser is set");
            }
            (uid, primary(uid))
        } else {
            if run_as_non_root {
                bail!("runAsNonRoot: the image's user {image_user:?} is not numeric, so it cannot be verified");
            }
            let e = db_entries(passwd).find(|e| e.0 == u).with_context(|| format!("user {u:?} not in the image"))?;
            (e.1, e.2)
        };
        let gid = match g {
            Some(g) if !g.is_empty() => match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => {
                    db_entries(group).find(|e| e.0 == g).with_context(|| format!("group {g:?} not in the image"))?.1
                }
            },
            _ => primary_gid.unwrap_or(0),
        };
        (uid, gid)
    };
    if run_as_non_root && uid == 0 {
        bail!("runAsNonRoot is set but the container would run as root");
    }
    let gid = match run_as_group {
        Some(g) => id(g, "runAsGroup")?,
        None => gid,
    };
    Ok((uid, gid))
}

/// A path of the container resolved in the image's root, as a runtime
/// resolves mount targets: symlinks are followed inside `root`, never out of
/// it (an absolute link starts again at `root`, `..` stops at it), and what
/// does not exist is taken as written. Returns the absolute path in the
/// container (`/var/run/secrets` is `/run/secrets` when `/var/run -> /run`).
pub fn resolve_in_root(root: &Path, path: &str) -> String {
    use std::collections::VecDeque;
    use std::path::Component;
    let mut pending: VecDeque<std::ffi::OsString> = Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let here: PathBuf = root.join(resolved.iter().collect::<PathBuf>()).join(&c);
        let target = match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() && links < 40 => std::fs::read_link(&here).ok(),
            _ => None,
        };
        match target {
            Some(t) => {
                links += 1;
                if t.is_absolute() {
                    resolved.clear();
                }
                let parts = t.components().filter_map(|c| match c {
                    Component::Normal(n) => Some(n.to_os_string()),
                    Component::ParentDir => Some("..".into()),
                    _ => None,
                });
                for (i, p) in parts.enumerate() {
                    pending.insert(i, p);
                }
            }
            None => resolved.push(c),
        }
    }
    format!("/{}", resolved.iter().collect::<PathBuf>().display())
}

/// How `container-exec` enters the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub root: PathBuf,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub no_new_privs: bool,
}

impl ExecSpec {
    /// `container-exec`'s arguments before `--` and the container's argv.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            EXEC_HELPER.to_string(),
            format!("--root={}", self.root.display()),
            format!("--cwd={}", self.cwd),
            format!("--user={}:{}", self.uid, self.gid),
            format!("--groups={}", self.groups.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
        ];
        if self.no_new_privs {
            a.push("--no-new-privs".into());
        }
        a
    }

    /// Parses what [ExecSpec::args] wrote (after the helper's name); the rest is the argv.
    pub fn parse(args: &[OsString]) -> Result<(ExecSpec, Vec<OsString>)> {
        let mut spec =
            ExecSpec { root: PathBuf::new(), cwd: "/".into(), uid: 0, gid: 0, groups: vec![], no_new_privs: false };
        let mut it = args.iter();
        for a in it.by_ref() {
            let a = a.to_str().context("non-UTF-8 option")?;
            if a == "--" {
                break;
            }
            let (k, v) = a.split_once('=').unwrap_or((a, ""));
            match k {
                "--root" => spec.root = PathBuf::from(v),
                "--cwd" => spec.cwd = v.to_string(),
                "--user" => {
                    let (u, g) = v.split_once(':').context("--user UID:GID")?;
                    (spec.uid, spec.gid) = (u.parse()?, g.parse()?);
                }
                "--groups" => {
                    spec.groups = v.split(',').filter(|g| !g.is_empty()).map(str::parse).collect::<Result<_, _>>()?
                }
                "--no-new-privs" => spec.no_new_privs = true,
                _ => bail!("unknown option {a}"),
            }
        }
        let argv: Vec<OsString> = it.cloned().collect();
        if spec.root.as_os_str().is_empty() || argv.is_empty() {
            bail!(
                "usage: podrunner {EXEC_HELPER} --root=DIR [--cwd=DIR] [--user=UID:GID] [--groups=G,..] [--no-new-privs] -- ARGV..."
            );
        }
        Ok((spec, argv))
    }
}

fn check(r: libc::c_int, what: &str) -> Result<()> {
    if r != 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// `podrunner container-exec ...`: enters the container's root as its user
/// and execs its process (only returns on failure, with exit status 128 as a
/// runtime's start error).
pub fn exec_helper(args: &[OsString]) -> i32 {
    let run = || -> Result<std::convert::Infallible> {
        let (spec, argv) = ExecSpec::parse(args)?;
        let root = CString::new(spec.root.as_os_str().as_encoded_bytes())?;
        // SAFETY: plain system calls on NUL-terminated strings and a slice we own.
        unsafe {
            check(libc::chroot(root.as_ptr()), &format!("chroot {}", spec.root.display()))?;
        }
        std::env::set_current_dir("/")?;
        std::env::set_current_dir(&spec.cwd).with_context(|| format!("working directory {}", spec.cwd))?;
        unsafe {
            check(libc::setgroups(spec.groups.len(), spec.groups.as_ptr()), "setgroups")?;
            check(libc::setgid(spec.gid), "setgid")?;
            check(libc::setuid(spec.uid), "setuid")?;
            // A change of credentials clears the parent-death signal the runner
            // set; set it again so the container dies with the runner.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if spec.no_new_privs {
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")?;
            }
        }
        // execvp semantics with the container's PATH, inside its root.
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
        Err(anyhow::Error::new(err).context(format!("exec {:?}", argv[0])))
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("podrunner {EXEC_HELPER}: {e:#}");
            128
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: s(&["/usr/local/bin/shardkv-node"]),
            cmd: s(&["--help"]),
            env: s(&["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8", "EMPTY="]),
            working_dir: "/var/lib/shardkv".into(),
            user: "10001:10001".into(),
        }
    }

    #[test]
    fn command_and_args_follow_the_kubernetes_rules() {
        let img = image();
        // Neither: Entrypoint + Cmd.
        assert_eq!(argv(&img, &[], &[]).unwrap(), s(&["/usr/local/bin/shardkv-node", "--help"]));
        // args only: Entrypoint + args (Cmd dropped).
        assert_eq!(argv(&img, &[], &s(&["--x"])).unwrap(), s(&["/usr/local/bin/shardkv-node", "--x"]));
        // command only: command (Entrypoint and Cmd dropped).
        assert_eq!(argv(&img, &s(&["shardkv-operator"]), &[]).unwrap(), s(&["shardkv-operator"]));
        // Both: command + args.
        assert_eq!(argv(&img, &s(&["shardkv", "get"]), &s(&["k"])).unwrap(), s(&["shardkv", "get", "k"]));
        // Cmd alone (no Entrypoint) is the process.
        let cmd_only = ImageConfig { entrypoint: vec![], cmd: s(&["/bin/app", "-v"]), ..img.clone() };
        assert_eq!(argv(&cmd_only, &[], &[]).unwrap(), s(&["/bin/app", "-v"]));
        assert_eq!(argv(&cmd_only, &[], &s(&["/bin/other"])).unwrap(), s(&["/bin/other"]));
        let nothing = ImageConfig::default();
        assert!(argv(&nothing, &[], &[]).is_err());
    }

    #[test]
    fn container_env_overrides_image_env() {
        let c = BTreeMap::from([("LANG".to_string(), "C".to_string()), ("POD".to_string(), "p-0".to_string())]);
        let e = env(&image(), c);
        assert_eq!(e["PATH"], "/usr/local/bin:/usr/bin");
        assert_eq!(e["LANG"], "C");
        assert_eq!(e["POD"], "p-0");
        assert_eq!(e["EMPTY"], "");
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n\
                          shardkv:x:10001:10001:shardkv:/var/lib/shardkv:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\nshardkv:x:10001:\nstaff:x:50:\n";

    #[test]
    fn the_user_comes_from_run_as_else_the_image() {
        let u = |img: &str, ru: Option<i64>, rg: Option<i64>, nonroot: bool| user(img, ru, rg, nonroot, PASSWD, GROUP);
        assert_eq!(u("10001:10001", None, None, true).unwrap(), (10001, 10001));
        assert_eq!(u("", None, None, false).unwrap(), (0, 0));
        assert_eq!(u("shardkv", None, None, false).unwrap(), (10001, 10001));
        assert_eq!(u("nobody:staff", None, None, false).unwrap(), (65534, 50));
        assert_eq!(u("4242", None, None, false).unwrap(), (4242, 0), "unknown uid: group 0, as runc");
        assert_eq!(u("10001", None, Some(7), false).unwrap(), (10001, 7));
        // runAsUser wins over the image; its group is the passwd one unless runAsGroup.
        assert_eq!(u("", Some(10001), None, true).unwrap(), (10001, 10001));
        assert_eq!(u("10001:10001", Some(65534), Some(65534), true).unwrap(), (65534, 65534));
        // runAsNonRoot, checked as the kubelet does.
        assert!(u("", None, None, true).is_err());
        assert!(u("0", None, None, true).is_err());
        assert!(u("shardkv", None, None, true).is_err(), "a name cannot be verified");
        assert!(u("10001", Some(0), None, true).is_err());
        assert!(u("ghost", None, None, false).is_err());
        assert!(u("1:ghosts", None, None, false).is_err());
    }

    #[test]
    fn exec_spec_round_trips() {
        let spec = ExecSpec {
            root: "/.podrunner-stage/skv-1/node/root".into(),
            cwd: "/var/lib/shardkv".into(),
            uid: 10001,
            gid: 10001,
            groups: vec![10001, 5],
            no_new_privs: true,
        };
        let mut args: Vec<OsString> = spec.args().into_iter().skip(1).map(OsString::from).collect();
        args.extend(["--", "shardkv-node", "--", "x"].map(OsString::from));
        let (parsed, argv) = ExecSpec::parse(&args).unwrap();
        assert_eq!(parsed, spec);
        assert_eq!(argv, ["shardkv-node", "--", "x"].map(OsString::from));
        let none = ExecSpec { groups: vec![], no_new_privs: false, ..spec };
        let mut args: Vec<OsString> = none.args().into_iter().skip(1).map(OsString::from).collect();
        args.extend(["--", "a"].map(OsString::from));
        assert_eq!(ExecSpec::parse(&args).unwrap().0, none);
        assert!(ExecSpec::parse(&["--root=/x".into(), "--".into()]).is_err(), "no argv");
    }

    #[test]
    fn paths_resolve_inside_the_image_root() {
        let root = std::env::temp_dir().join(format!("podrunner-resolve-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["run/lock", "var", "usr/lib", "data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let link = |to: &str, at: &str| std::os::unix::fs::symlink(to, root.join(at)).unwrap();
        link("/run", "var/run"); // absolute: starts again at the root, not the host's /run
        link("usr/lib", "lib"); // relative
        link("../../..", "usr/lib/up"); // climbs past the root: stops at it
        link("/data/../../../etc", "escape");
        link("loop2", "loop1");
        link("loop1", "loop2");
        let r = |p: &str| resolve_in_root(&root, p);
        assert_eq!(r("/var/run/secrets/kubernetes.io/serviceaccount"), "/run/secrets/kubernetes.io/serviceaccount");
        assert_eq!(r("/var/run"), "/run");
        assert_eq!(r("/lib/x86_64-linux-gnu"), "/usr/lib/x86_64-linux-gnu");
        assert_eq!(r("/usr/lib/up/tmp"), "/tmp");
        assert_eq!(r("/escape/hosts"), "/etc/hosts");
        assert_eq!(r("/var/lib/shardkv"), "/var/lib/shardkv");
        assert_eq!(r("/a/../../b/./c"), "/b/c");
        assert_eq!(r("/"), "/");
        assert!(r("/loop1/x").ends_with("/x"), "a symlink loop ends, inside the root");
        let _ = std::fs::remove_dir_all(&root);
    }

    /// A layout as `buildah push oci:DIR:REF` writes it, read back.
    #[test]
    fn a_layout_resolves_to_its_manifest_and_config() {
        let dir = std::env::temp_dir().join(format!("podrunner-oci-test-{}", std::process::id()));
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |hex: &str, v: Value| std::fs::write(blobs.join(hex), serde_json::to_vec(&v).unwrap()).unwrap();
        let (config, manifest, index) = ("c".repeat(64), "a".repeat(64), "b".repeat(64));
        put(
            &config,
            serde_json::json!({"architecture": "amd64", "os": "linux", "config": {
                "User": "10001:10001", "Env": ["PATH=/usr/bin"], "Entrypoint": ["/usr/local/bin/shardkv-node"],
                "WorkingDir": "/var/lib/shardkv"}}),
        );
        put(
            &manifest,
            serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"digest": format!("sha256:{config}")}, "layers": []}),
        );
        put(
            &index,
            serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [{"digest": "sha256:0000", "platform": {"os": "linux", "architecture": "arm64"}},
                              {"digest": format!("sha256:{manifest}"), "platform": {"os": "linux", "architecture": "amd64"}}]}),
        );
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{manifest}"),
                 "annotations": {"org.opencontainers.image.ref.name": "dev"}},
                {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{index}"),
                 "annotations": {"org.opencontainers.image.ref.name": "multi"}}]}))
            .unwrap(),
        )
        .unwrap();
        let (digest, m) = resolve_manifest(&dir, Some("dev")).unwrap();
        assert_eq!(digest, format!("sha256:{manifest}"));
        let cfg = ImageConfig::from_json(&read_blob(&dir, m["config"]["digest"].as_str().unwrap()).unwrap());
        assert_eq!(cfg.entrypoint, s(&["/usr/local/bin/shardkv-node"]));
        assert_eq!((cfg.user.as_str(), cfg.working_dir.as_str()), ("10001:10001", "/var/lib/shardkv"));
        assert!(cfg.cmd.is_empty());
        // Through an image index: the linux/amd64 manifest.
        assert_eq!(resolve_manifest(&dir, Some("multi")).unwrap().0, format!("sha256:{manifest}"));
        let missing = resolve_manifest(&dir, Some("nope")).unwrap_err().to_string();
        assert!(missing.contains("\"dev\"") && missing.contains("\"multi\""), "{missing}");
        assert!(resolve_manifest(&dir, None).is_err(), "two images: a ref is needed");
        // NAME=LAYOUT:REF, the name holding ':' itself.
        let spec = format!("shardkv:e2e={}:dev", dir.display());
        let (name, layout, reference) = parse_spec(&spec).unwrap();
        assert_eq!((name.as_str(), reference.as_deref()), ("shardkv:e2e", Some("dev")));
        assert_eq!(layout, std::fs::canonicalize(&dir).unwrap());
        assert_eq!(parse_spec(&format!("x={}", dir.display())).unwrap().2, None);
        assert!(parse_spec("x=/nonexistent-layout:dev").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
