//! Volumes. A PersistentVolumeClaim is provisioned as a directory (a hostPath
//! PersistentVolume pre-bound to the claim; kube-controller-manager binds
//! them) that outlives pods and is removed when the claim is deleted. Pod
//! volumes (PVC, emptyDir, configMap, secret, projected with service-account
//! tokens from TokenRequest) become host directories, bind-mounted at the
//! container's mount paths in its own mount namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

pub const PROVISIONER: &str = "shardkv.dev/e2e-podrunner";

/// Creates the default StorageClass whose claims this runner provisions.
pub async fn ensure_storage_class(client: &Client, name: &str) -> Result<()> {
    let api = Api::<StorageClass>::all(client.clone());
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let sc: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": name, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate",
    }))?;
    match api.create(&PostParams::default(), &sc).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// One provisioning pass: a PV for each pending claim of our class, and
/// deletion (directory first) of each released PV we provisioned.
pub async fn provision(
    client: &Client,
    class: &str,
    volumes_dir: &Path,
    pvcs: &[std::sync::Arc<PersistentVolumeClaim>],
    pvs: &[std::sync::Arc<PersistentVolume>],
) -> Result<()> {
    let pv_api = Api::<PersistentVolume>::all(client.clone());
    for pvc in pvcs {
        let spec = pvc.spec.clone().unwrap_or_default();
        let phase = pvc.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if phase != "Pending" || spec.volume_name.is_some() || pvc.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if spec.storage_class_name.as_deref().unwrap_or(class) != class {
            continue;
        }
        let uid = pvc.uid().unwrap_or_default();
        let name = format!("pvc-{uid}");
        if pvs.iter().any(|pv| pv.name_any() == name) {
            continue;
        }
        let path = volumes_dir.join(&name);
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        let size = spec
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .map(|q| q.0.clone())
            .unwrap_or_else(|| "1Gi".to_string());
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": class,
                "hostPath": {"path": path.to_string_lossy(), "type": "Directory"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                             "namespace": pvc.namespace(), "name": pvc.name_any(), "uid": uid},
            },
        }))?;
        match pv_api.create(&PostParams::default(), &pv).await {
            Ok(_) => {
                tracing::info!(pvc = %format!("{}/{}", pvc.namespace().unwrap_or_default(), pvc.name_any()), pv = %name, dir = %path.display(), "provisioned")
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for pv in pvs {
        let ours = pv.annotations().get("pv.kubernetes.io/provisioned-by").map(String::as_str) == Some(PROVISIONER);
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
        if !ours || !(phase == "Released" || phase == "Failed") || pv.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(path) = pv.spec.as_ref().and_then(|s| s.host_path.as_ref()).map(|h| PathBuf::from(&h.path))
            && path.starts_with(volumes_dir)
        {
            let _ = std::fs::remove_dir_all(&path);
        }
        match pv_api.delete(&pv.name_any(), &DeleteParams::default()).await {
            Ok(_) => tracing::info!(pv = %pv.name_any(), "claim deleted: volume and its directory removed"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn write_file(dir: &Path, rel: &str, data: &[u8], mode: Option<i32>) -> Result<()> {
    let rel = Path::new(rel);
    if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        bail!("volume item path {} escapes its volume", rel.display());
    }
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    if let Some(m) = mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m as u32))?;
    }
    Ok(())
}

/// A volume's files from its source's data: every key, or the items asked for, each with
/// its mode.
type VolumeFiles = Vec<(String, Vec<u8>, Option<i32>)>;

fn item_files(data: &BTreeMap<String, Vec<u8>>, items: &Option<Vec<KeyToPath>>) -> Result<VolumeFiles> {
    match items {
        Some(items) => items
            .iter()
            .map(|it| {
                let v = data.get(&it.key).with_context(|| format!("no key {}", it.key))?;
                Ok((it.path.clone(), v.clone(), it.mode))
            })
            .collect(),
        None => Ok(data.iter().map(|(k, v)| (k.clone(), v.clone(), None)).collect()),
    }
}

fn write_items(dir: &Path, data: &BTreeMap<String, Vec<u8>>, items: &Option<Vec<KeyToPath>>) -> Result<()> {
    for (rel, bytes, mode) in item_files(data, items)? {
        write_file(dir, &rel, &bytes, mode)?;
    }
    Ok(())
}

/// Writes a secret volume the way the kubelet's atomic writer does, so that a reader never
/// sees a mix of old and new files (a rotated certificate with the previous key): the files go
/// into a fresh hidden directory, the `..data` symlink is swapped to it in one rename, and each
/// top-level name is a symlink through `..data`. Returns whether anything changed.
fn write_atomically(vdir: &Path, files: &VolumeFiles) -> Result<bool> {
    let data_link = vdir.join("..data");
    let unchanged = data_link.exists()
        && files.iter().all(|(rel, bytes, _)| std::fs::read(data_link.join(rel)).is_ok_and(|have| have == *bytes))
        && top_level_names(files).iter().all(|name| vdir.join(name).exists());
    if unchanged {
        return Ok(false);
    }
    let previous = std::fs::read_link(&data_link).ok();
    let stamp = format!("..{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
    let version = vdir.join(&stamp);
    std::fs::create_dir_all(&version)?;
    for (rel, bytes, mode) in files {
        write_file(&version, rel, bytes, *mode)?;
    }
    let tmp_link = vdir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&stamp, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link).with_context(|| format!("swapping {}", data_link.display()))?;
    for name in top_level_names(files) {
        let link = vdir.join(&name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(&name), &link)?;
        }
    }
    if let Some(old) = previous {
        let _ = std::fs::remove_dir_all(vdir.join(old));
    }
    Ok(true)
}

fn top_level_names(files: &VolumeFiles) -> std::collections::BTreeSet<String> {
    files
        .iter()
        .filter_map(|(rel, _, _)| Path::new(rel).components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect()
}

/// Brings the pod's secret volumes up to date with their Secrets, as the kubelet's periodic
/// sync does (certificates rotated by an operator reach running containers without a
/// restart). Returns the names of the volumes that changed.
pub async fn refresh_secrets(client: &Client, pod: &Pod, dir: &Path, fs_group: Option<u32>) -> Result<Vec<String>> {
    let ns = pod.namespace().unwrap_or_default();
    let mut changed = Vec::new();
    for v in pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default() {
        let Some(s) = &v.secret else { continue };
        let name = s.secret_name.clone().unwrap_or_default();
        // A Secret deleted or not yet there leaves the files as they are, as the kubelet does.
        let Some(data) = secret_data(client, &ns, &name).await? else { continue };
        let vdir = dir.join("volumes").join(&v.name);
        if write_atomically(&vdir, &item_files(&data, &s.items)?)? {
            if let Some(g) = fs_group {
                give_to_group(&vdir, g)?;
            }
            changed.push(v.name.clone());
        }
    }
    Ok(changed)
}

async fn config_map_data(client: &Client, ns: &str, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns).get_opt(name).await?;
    Ok(cm.map(|cm| {
        let mut m: BTreeMap<String, Vec<u8>> =
            cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
        m.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
        m
    }))
}

async fn secret_data(client: &Client, ns: &str, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>> {
    let s = Api::<Secret>::namespaced(client.clone(), ns).get_opt(name).await?;
    Ok(s.map(|s| s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect()))
}

fn downward_items(pod: &Pod, dir: &Path, items: &[DownwardAPIVolumeFile], pod_ip: &str, host_ip: &str) -> Result<()> {
    for it in items {
        if let Some(f) = &it.field_ref {
            let v = crate::env::field_ref(pod, f, pod_ip, host_ip)?;
            write_file(dir, &it.path, v.as_bytes(), it.mode)?;
        }
    }
    Ok(())
}

/// A bound service-account token for the pod (TokenRequest).
async fn token(client: &Client, pod: &Pod, audience: Option<&str>, expiration: Option<i64>) -> Result<String> {
    let ns = pod.namespace().unwrap_or_default();
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let req: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {
            "audiences": audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            "expirationSeconds": expiration.unwrap_or(3607),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod.name_any(), "uid": pod.uid()},
        },
    }))?;
    let api = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ns);
    let resp: TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &req)
        .await
        .with_context(|| format!("TokenRequest for service account {ns}/{sa}"))?;
    resp.status.and_then(|s| s.token).context("TokenRequest answered without a token")
}

/// Waits (bounded) until the claim is bound and returns its volume's directory.
async fn claim_dir(client: &Client, ns: &str, claim: &str) -> Result<PathBuf> {
    let pvcs = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns);
    let pvs = Api::<PersistentVolume>::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(pvc) = pvcs.get_opt(claim).await?
            && let Some(vol) = pvc.spec.as_ref().and_then(|s| s.volume_name.clone())
            && pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        {
            let pv = pvs.get(&vol).await?;
            let spec = pv.spec.unwrap_or_default();
            let path = spec
                .host_path
                .map(|h| h.path)
                .or(spec.local.map(|l| l.path))
                .with_context(|| format!("volume {vol} of claim {ns}/{claim} is neither hostPath nor local"))?;
            return Ok(PathBuf::from(path));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("claim {ns}/{claim} not bound after 120s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Materialises every volume of the pod under `dir`; returns name -> host path.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    dir: &Path,
    pod_ip: &str,
    host_ip: &str,
) -> Result<BTreeMap<String, PathBuf>> {
    let ns = pod.namespace().unwrap_or_default();
    let mut out = BTreeMap::new();
    for v in pod.spec.as_ref().map(|s| s.volumes.clone().unwrap_or_default()).unwrap_or_default() {
        let vdir = dir.join("volumes").join(&v.name);
        let path = prepare_one(client, pod, &ns, &v, &vdir, pod_ip, host_ip)
            .await
            .with_context(|| format!("volume {}", v.name))?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

async fn prepare_one(
    client: &Client,
    pod: &Pod,
    ns: &str,
    v: &Volume,
    vdir: &Path,
    pod_ip: &str,
    host_ip: &str,
) -> Result<PathBuf> {
    if let Some(c) = &v.persistent_volume_claim {
        return claim_dir(client, ns, &c.claim_name).await;
    }
    if let Some(h) = &v.host_path {
        return Ok(PathBuf::from(&h.path));
    }
    std::fs::create_dir_all(vdir)?;
    if v.empty_dir.is_some() {
    } else if let Some(c) = &v.config_map {
        match config_map_data(client, ns, &c.name).await? {
            Some(d) => write_items(vdir, &d, &c.items)?,
            None if c.optional.unwrap_or(false) => {}
            None => bail!("configMap {ns}/{} not found", c.name),
        }
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        match secret_data(client, ns, &name).await? {
            Some(d) => {
                write_atomically(vdir, &item_files(&d, &s.items)?)?;
            }
            None if s.optional.unwrap_or(false) => {}
            None => bail!("secret {ns}/{name} not found"),
        }
    } else if let Some(d) = &v.downward_api {
        downward_items(pod, vdir, d.items.as_deref().unwrap_or_default(), pod_ip, host_ip)?;
    } else if let Some(p) = &v.projected {
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let tok = token(client, pod, t.audience.as_deref(), t.expiration_seconds).await?;
                write_file(vdir, &t.path, tok.as_bytes(), Some(0o600))?;
            }
            if let Some(c) = &src.config_map {
                match config_map_data(client, ns, &c.name).await? {
                    Some(d) => write_items(vdir, &d, &c.items)?,
                    None if c.optional.unwrap_or(false) => {}
                    None => bail!("configMap {ns}/{} not found", c.name),
                }
            }
            if let Some(s) = &src.secret {
                match secret_data(client, ns, &s.name).await? {
                    Some(d) => write_items(vdir, &d, &s.items)?,
                    None if s.optional.unwrap_or(false) => {}
                    None => bail!("secret {ns}/{} not found", s.name),
                }
            }
            if let Some(d) = &src.downward_api {
                downward_items(pod, vdir, d.items.as_deref().unwrap_or_default(), pod_ip, host_ip)?;
            }
        }
    } else {
        bail!("volume type not supported by the pod runner")
    }
    Ok(vdir.to_path_buf())
}

fn walk(path: &Path, f: &mut dyn FnMut(&Path, bool) -> std::io::Result<()>) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    f(path, meta.is_dir())?;
    if meta.is_dir() {
        for e in std::fs::read_dir(path)? {
            walk(&e?.path(), f)?;
        }
    }
    Ok(())
}

/// fsGroup: the volume's files belong to group `gid`, group-writable, and
/// directories keep the group for new files (setgid).
pub fn give_to_group(path: &Path, gid: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    walk(path, &mut |p, dir| {
        std::os::unix::fs::lchown(p, None, Some(gid))?;
        let mode = std::fs::symlink_metadata(p)?.permissions().mode();
        let extra = if dir { 0o2070 } else { 0o060 };
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | extra))
    })
    .with_context(|| format!("giving {} to group {gid}", path.display()))
}

/// Projected token files belong to the pod's user.
pub fn give_to_user(path: &Path, uid: u32) -> Result<()> {
    walk(path, &mut |p, _| std::os::unix::fs::lchown(p, Some(uid), None))
        .with_context(|| format!("giving {} to user {uid}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::{VolumeFiles, write_atomically};

    fn files(cert: &[u8], key: &[u8]) -> VolumeFiles {
        vec![("tls.crt".into(), cert.to_vec(), None), ("tls.key".into(), key.to_vec(), Some(0o600))]
    }

    #[test]
    fn a_secret_volume_changes_all_its_files_in_one_swap() {
        let dir = tempfile::tempdir().unwrap();
        let vdir = dir.path();
        assert!(write_atomically(vdir, &files(b"cert 1", b"key 1")).unwrap());
        assert_eq!(std::fs::read(vdir.join("tls.crt")).unwrap(), b"cert 1");
        let first = std::fs::read_link(vdir.join("..data")).unwrap();
        assert!(!write_atomically(vdir, &files(b"cert 1", b"key 1")).unwrap(), "unchanged data rewrites nothing");

        assert!(write_atomically(vdir, &files(b"cert 2", b"key 2")).unwrap());
        assert_eq!(std::fs::read(vdir.join("tls.crt")).unwrap(), b"cert 2");
        assert_eq!(std::fs::read(vdir.join("tls.key")).unwrap(), b"key 2");
        assert_ne!(std::fs::read_link(vdir.join("..data")).unwrap(), first);
        assert!(!vdir.join(&first).exists(), "the previous version is removed");
        assert_eq!(std::fs::read_link(vdir.join("tls.key")).unwrap(), std::path::Path::new("..data/tls.key"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(vdir.join("tls.key")).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
