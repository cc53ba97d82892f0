//! One pod's life on this node: network, volumes, containers as processes,
//! probes, status, restarts, and graceful deletion (preStop, SIGTERM, SIGKILL
//! at the end of the grace period, then the pod object is deleted).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::net::PodNet;
use crate::{Runner, probe, volumes};

/// What the node loop tells a pod worker: the latest object, or None once the
/// object is gone from the API (force-deleted).
pub type PodUpdates = watch::Receiver<Option<Arc<Pod>>>;

/// Staging directories of a pod's bind mounts (empty directories on the host;
/// the mounts exist only in the containers' mount namespaces). At the root,
/// so no volume mount can hide them.
fn stage_dir(netns: &str) -> PathBuf {
    PathBuf::from(STAGE_ROOT).join(netns)
}

pub const STAGE_ROOT: &str = "/.podrunner-stage";

/// Removes staging directories bottom-up with rmdir only: should a staged
/// mount ever be visible here, its content is never touched.
fn remove_stage(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
                remove_stage(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Where a non-root container sees its image's directory.
const IMAGE_MOUNT: &str = "/run/podrunner-image";

fn now() -> Value {
    serde_json::to_value(Time(Timestamp::now())).unwrap()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[derive(Default)]
struct ProbeState {
    successes: i32,
    failures: i32,
    next: Option<Instant>,
}

/// A container process ended: (container index, pid, exit code or 128+signal).
type Exit = (usize, u32, Option<i32>);

struct Ctr {
    spec: Container,
    pid: Option<u32>,
    started_at: Option<Value>,
    restarts: i32,
    ready: bool,
    started: bool,
    last_terminated: Option<Value>,
    terminated: Option<Value>,
    waiting: Option<(String, String)>,
    next_start: Option<Instant>,
    backoff: Duration,
    readiness: ProbeState,
    liveness: ProbeState,
    startup: ProbeState,
    /// An OCI container's user and group: exec probes and hooks enter its
    /// root as them. None for a host-binary container.
    exec_as: Option<(u32, u32)>,
}

impl Ctr {
    fn new(spec: Container) -> Ctr {
        Ctr {
            spec,
            pid: None,
            started_at: None,
            restarts: 0,
            ready: false,
            started: false,
            last_terminated: None,
            terminated: None,
            waiting: Some(("ContainerCreating".into(), String::new())),
            next_start: Some(Instant::now()),
            backoff: Duration::from_secs(1),
            readiness: ProbeState::default(),
            liveness: ProbeState::default(),
            startup: ProbeState::default(),
            exec_as: None,
        }
    }

    fn status(&self, image_id: String) -> Value {
        let state = if self.pid.is_some() {
            json!({"running": {"startedAt": self.started_at}})
        } else if let Some(t) = &self.terminated {
            json!({"terminated": t})
        } else {
            let (reason, message) = self.waiting.clone().unwrap_or_default();
            json!({"waiting": {"reason": reason, "message": message}})
        };
        json!({
            "name": self.spec.name,
            "image": self.spec.image.clone().unwrap_or_default(),
            "imageID": image_id,
            "containerID": self.pid.map(|p| format!("podrunner://{p}")),
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restarts,
            "state": state,
            "lastState": self.last_terminated.as_ref().map(|t| json!({"terminated": t})).unwrap_or(json!({})),
        })
    }
}

/// How often running pods' secret volumes are compared with their Secrets (the kubelet's
/// sync is about a minute; faster here so that rotation scenarios take seconds).
const SECRET_SYNC_PERIOD: Duration = Duration::from_secs(3);

struct Worker {
    runner: Arc<Runner>,
    pod: Arc<Pod>,
    api: Api<Pod>,
    key: String,
    dir: PathBuf,
    net: Option<PodNet>,
    volumes: BTreeMap<String, PathBuf>,
    ctrs: Vec<Ctr>,
    exits: (mpsc::UnboundedSender<Exit>, mpsc::UnboundedReceiver<Exit>),
    conditions: BTreeMap<&'static str, (bool, Value)>,
    start_time: Option<Value>,
    last_status: Value,
    message: Option<String>,
}

/// Runs the pod until it is deleted, gone, finished, or the runner stops.
pub async fn run(runner: Arc<Runner>, mut updates: PodUpdates) {
    let Some(pod) = updates.borrow().clone() else { return };
    let ns = pod.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", pod.name_any());
    let uid = pod.uid().unwrap_or_default();
    let dir = runner.work_dir.join("pods").join(format!("{ns}_{}_{}", pod.name_any(), &uid[..8.min(uid.len())]));
    let ctrs = pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default().into_iter().map(Ctr::new).collect();
    let mut w = Worker {
        api: Api::namespaced(runner.client.clone(), &ns),
        runner,
        pod,
        key,
        dir,
        net: None,
        volumes: BTreeMap::new(),
        ctrs,
        exits: mpsc::unbounded_channel(),
        conditions: BTreeMap::new(),
        start_time: None,
        last_status: Value::Null,
        message: None,
    };
    tracing::info!(pod = %w.key, "starting pod");
    let outcome = w.main_loop(&mut updates).await;
    w.teardown(outcome).await;
}

enum Outcome {
    Deleted,
    Gone,
    Finished,
    Shutdown,
}

impl Worker {
    fn spec_restart_policy(&self) -> String {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_else(|| "Always".into())
    }

    fn set_condition(&mut self, ty: &'static str, ok: bool) {
        match self.conditions.get(ty) {
            Some((cur, _)) if *cur == ok => {}
            _ => {
                self.conditions.insert(ty, (ok, now()));
            }
        }
    }

    async fn setup(&mut self) -> Result<()> {
        let uid = self.pod.uid().unwrap_or_default();
        std::fs::create_dir_all(&self.dir)?;
        let net = self.runner.net.add_pod(&uid[..12.min(uid.len())]).await.context("pod network")?;
        self.net = Some(net.clone());
        self.runner.register_netns(&uid, &net, &self.pod);
        self.start_time = Some(now());
        let pod_ip = net.ip.to_string();
        let host_ip = self.runner.net.gateway.to_string();
        self.volumes = volumes::prepare(&self.runner.client, &self.pod, &self.dir, &pod_ip, &host_ip).await?;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let psc = spec.security_context.clone().unwrap_or_default();
        // Like the kubelet: volumes belong to fsGroup (group-writable), and
        // projected token files to the pods' user when every container has one.
        let users: Vec<Option<i64>> = spec.containers.iter().map(|c| run_as(&psc, c).0).collect();
        let token_owner = users.first().copied().flatten().filter(|u| users.iter().all(|x| *x == Some(*u)));
        for v in spec.volumes.iter().flatten() {
            let Some(path) = self.volumes.get(&v.name) else { continue };
            if v.host_path.is_some() {
                continue;
            }
            if let Some(g) = psc.fs_group {
                volumes::give_to_group(path, g as u32)?;
            }
            if v.projected.is_some()
                && let Some(u) = token_owner
            {
                volumes::give_to_user(path, u as u32)?;
            }
        }
        self.set_condition("PodReadyToStartContainers", true);
        Ok(())
    }

    async fn main_loop(&mut self, updates: &mut PodUpdates) -> Outcome {
        self.set_condition("PodScheduled", true);
        // Setup (network, volumes) is retried until it works or the pod goes.
        let mut delay = Duration::from_millis(500);
        loop {
            if let Some(o) = self.deletion_or_gone(updates) {
                return o;
            }
            match self.setup().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = %self.key, error = %format!("{e:#}"), "pod setup failed; retrying");
                    self.message = Some(format!("pod runner: {e:#}"));
                    self.push_status().await;
                    if let Some(net) = self.net.take() {
                        self.runner.net.remove_pod(&net).await;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = updates.changed() => {}
                        _ = self.runner.shutdown.cancelled() => return Outcome::Shutdown,
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.message = None;
        if self.pod.spec.as_ref().and_then(|s| s.init_containers.as_ref()).is_some_and(|v| !v.is_empty()) {
            self.message = Some("init containers are not supported by the pod runner".into());
            tracing::warn!(pod = %self.key, "init containers are not supported; running app containers directly");
        }
        self.set_condition("Initialized", true);
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut secrets_synced = Instant::now();
        loop {
            if let Some(o) = self.deletion_or_gone(updates) {
                return o;
            }
            if secrets_synced.elapsed() >= SECRET_SYNC_PERIOD {
                secrets_synced = Instant::now();
                self.refresh_secrets().await;
            }
            // Start (or restart) containers whose time has come.
            for i in 0..self.ctrs.len() {
                if self.ctrs[i].pid.is_none() && self.ctrs[i].next_start.is_some_and(|t| t <= Instant::now()) {
                    self.start(i).await;
                }
            }
            self.run_probes().await;
            let all_ready = self.ctrs.iter().all(|c| c.ready);
            self.set_condition("ContainersReady", all_ready);
            self.set_condition("Ready", all_ready);
            self.push_status().await;
            if self.ctrs.iter().all(|c| c.pid.is_none() && c.next_start.is_none() && c.terminated.is_some()) {
                return Outcome::Finished;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = updates.changed() => {}
                Some((i, pid, code)) = self.exits.1.recv() => self.exited(i, pid, code),
                _ = self.runner.shutdown.cancelled() => return Outcome::Shutdown,
            }
        }
    }

    async fn refresh_secrets(&self) {
        let fs_group = self.pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|c| c.fs_group);
        match volumes::refresh_secrets(&self.runner.client, &self.pod, &self.dir, fs_group.map(|g| g as u32)).await {
            Ok(changed) if !changed.is_empty() => {
                tracing::info!(pod = %self.key, volumes = ?changed, "secret volumes updated from their Secrets")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(pod = %self.key, error = %format!("{e:#}"), "refreshing secret volumes failed"),
        }
    }

    fn deletion_or_gone(&mut self, updates: &mut PodUpdates) -> Option<Outcome> {
        match updates.borrow_and_update().clone() {
            None => Some(Outcome::Gone),
            Some(p) => {
                let deleting = p.metadata.deletion_timestamp.is_some();
                self.pod = p;
                deleting.then_some(Outcome::Deleted)
            }
        }
    }

    fn image_path(&self, c: &Container) -> Option<PathBuf> {
        c.image.as_ref().and_then(|i| self.runner.images.get(i).cloned())
    }

    /// What a container status reports as imageID: NAME@DIGEST for an OCI
    /// image (as a kubelet does), podrunner://PATH for a host binary.
    fn image_id(&self, c: &Container) -> String {
        let name = c.image.clone().unwrap_or_default();
        if let Some(img) = self.runner.oci.get(&name) {
            let repo = match name.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => repo,
                _ => name.as_str(),
            };
            return format!("{repo}@{}", img.digest);
        }
        self.image_path(c).map(|p| format!("podrunner://{}", p.display())).unwrap_or_default()
    }

    async fn start(&mut self, i: usize) {
        match self.spawn(i).await {
            Ok(pid) => {
                let c = &mut self.ctrs[i];
                c.pid = Some(pid);
                c.started_at = Some(now());
                c.waiting = None;
                c.terminated = None;
                c.next_start = None;
                c.ready = c.spec.readiness_probe.is_none();
                c.started = c.spec.startup_probe.is_none();
                c.readiness = ProbeState::default();
                c.liveness = ProbeState::default();
                c.startup = ProbeState::default();
                tracing::info!(pod = %self.key, container = %c.spec.name, pid, "container started");
            }
            Err(e) => {
                let c = &mut self.ctrs[i];
                tracing::warn!(pod = %self.key, container = %c.spec.name, error = %format!("{e:#}"), "container start failed");
                c.waiting = Some(("CreateContainerError".into(), format!("{e:#}")));
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).min(Duration::from_secs(20));
            }
        }
    }

    async fn spawn(&mut self, i: usize) -> Result<u32> {
        let spec = self.ctrs[i].spec.clone();
        let net = self.net.clone().context("no pod network")?;
        let image = spec.image.clone().unwrap_or_default();
        let oci = self.runner.oci.get(&image).cloned();
        let entry = match &oci {
            Some(_) => None,
            None => Some(self.image_path(&spec).with_context(|| {
                format!(
                    "image {image} is neither an OCI image (podrunner --oci-image {image}=LAYOUT:REF; known: {:?}) \
                     nor mapped to a binary (--image {image}=PATH; known: {:?})",
                    self.runner.oci.keys().collect::<Vec<_>>(),
                    self.runner.images.keys().collect::<Vec<_>>()
                )
            })?),
        };
        let host_ip = self.runner.net.gateway.to_string();
        let pod_ip = net.ip.to_string();
        let mut base = BTreeMap::new();
        if oci.is_none() {
            // An OCI image brings its own PATH (Env).
            base.insert("PATH".to_string(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string());
        }
        base.insert("HOSTNAME".to_string(), self.pod.name_any());
        base.insert("KUBERNETES_SERVICE_HOST".to_string(), host_ip.clone());
        base.insert("KUBERNETES_SERVICE_PORT".to_string(), self.runner.api_port.to_string());
        base.insert("KUBERNETES_SERVICE_PORT_HTTPS".to_string(), self.runner.api_port.to_string());
        let env = crate::env::container_env(&self.runner.client, &self.pod, &spec, base, &pod_ip, &host_ip).await?;
        let command: Vec<String> = spec.command.iter().flatten().map(|a| crate::env::expand(a, &env)).collect();
        let args: Vec<String> = spec.args.iter().flatten().map(|a| crate::env::expand(a, &env)).collect();
        let psc = self.pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
        let (user, group, non_root) = run_as(&psc, &spec);
        let groups: Vec<i64> =
            psc.fs_group.into_iter().chain(psc.supplemental_groups.iter().flatten().copied()).collect();
        let read_only_root = spec.security_context.as_ref().and_then(|s| s.read_only_root_filesystem) == Some(true);

        // Every source is first bind-mounted into a staging directory, so
        // that a mount over, say, /tmp cannot hide a source below it.
        let stage = stage_dir(&net.netns).join(&spec.name);
        remove_stage(&stage);
        let mut binds: Vec<Bind> = Vec::new();
        for m in spec.volume_mounts.iter().flatten() {
            let mut source =
                self.volumes.get(&m.name).with_context(|| format!("volumeMount {} names no volume", m.name))?.clone();
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(sub);
                std::fs::create_dir_all(&source)?;
            }
            binds.push(Bind { source, target: m.mount_path.clone(), read_only: m.read_only == Some(true) });
        }

        let (argv, env, launch) = match (oci, entry) {
            (Some(img), _) => {
                // An OCI container: its image's root (an overlay), process, env and user.
                let argv = crate::oci::argv(&img.config, &command, &args)?;
                let etc = |f: &str| std::fs::read_to_string(img.rootfs.join("etc").join(f)).unwrap_or_default();
                let (uid, gid) =
                    crate::oci::user(&img.config.user, user, group, non_root, &etc("passwd"), &etc("group"))?;
                let mut supplementary: Vec<u32> = Vec::new();
                for g in &groups {
                    let g = u32::try_from(*g).context("fsGroup/supplementalGroups out of range")?;
                    if !supplementary.contains(&g) {
                        supplementary.push(g);
                    }
                }
                let cwd = spec
                    .working_dir
                    .clone()
                    .filter(|w| !w.is_empty())
                    .or_else(|| Some(img.config.working_dir.clone()).filter(|w| !w.is_empty()))
                    .unwrap_or_else(|| "/".to_string());
                // A fresh writable layer at every start, as a runtime makes a new container.
                let layer = self.dir.join("containers").join(&spec.name);
                let _ = std::fs::remove_dir_all(&layer);
                let (upper, work) = (layer.join("upper"), layer.join("work"));
                std::fs::create_dir_all(&upper)?;
                std::fs::create_dir_all(&work)?;
                let mount = stage.join("root");
                std::fs::create_dir_all(&mount)?;
                for p in [&img.rootfs, &upper, &work] {
                    if p.to_string_lossy().contains([',', ':']) {
                        bail!("overlay paths cannot hold ',' or ':': {}", p.display());
                    }
                }
                self.ctrs[i].exec_as = Some((uid, gid));
                let exec = crate::oci::ExecSpec {
                    root: mount.clone(),
                    cwd: cwd.clone(),
                    uid,
                    gid,
                    groups: supplementary,
                    no_new_privs: spec.security_context.as_ref().and_then(|s| s.allow_privilege_escalation)
                        == Some(false),
                };
                let root =
                    RootFs { image: img.rootfs.clone(), upper, work, mount, helper: self.runner.helper.clone(), exec };
                (
                    argv,
                    crate::oci::env(&img.config, env),
                    Launch::new(stage, binds, read_only_root, Some(cwd), None, Some(root)),
                )
            }
            (None, Some(entry)) => {
                // A host binary. command[0] names a binary of the image (its
                // directory), else the host's. A non-root container may not reach
                // the image's host directory (under /root, say): it sees the
                // directory bind-mounted at IMAGE_MOUNT.
                self.ctrs[i].exec_as = None;
                let image_dir = entry.parent().context("image binary without a directory")?.to_path_buf();
                let as_user = user.is_some_and(|u| u != 0);
                let in_image = |name: &std::path::Path| {
                    let file = name.file_name().unwrap_or_default();
                    image_dir.join(file).is_file().then(|| {
                        if as_user { std::path::Path::new(IMAGE_MOUNT).join(file) } else { image_dir.join(file) }
                            .to_string_lossy()
                            .into_owned()
                    })
                };
                let mut argv: Vec<String> = Vec::new();
                if let Some(first) = command.first() {
                    argv.push(in_image(std::path::Path::new(first)).unwrap_or(first.clone()));
                    argv.extend(command[1..].iter().cloned());
                } else {
                    argv.push(in_image(&entry).context("image binary vanished")?);
                }
                argv.extend(args);
                if as_user {
                    binds.push(Bind { source: image_dir.clone(), target: IMAGE_MOUNT.to_string(), read_only: true });
                }
                for b in &binds {
                    self.runner.note_mountpoint(std::path::Path::new(&b.target));
                }
                if non_root && user.unwrap_or(0) == 0 {
                    bail!(
                        "runAsNonRoot is set but no non-zero runAsUser: the pod runner runs images as root otherwise"
                    );
                }
                let run_as = (user.is_some() || group.is_some())
                    .then(|| (user.unwrap_or(0), group.or(user).unwrap_or(0), groups));
                let wd = spec.working_dir.clone().filter(|s| !s.is_empty());
                (argv, env, Launch::new(stage, binds, read_only_root, wd, run_as, None))
            }
            (None, None) => unreachable!("an image is either OCI or a host binary"),
        };
        for (i, _) in launch.binds.iter().enumerate() {
            std::fs::create_dir_all(launch.stage.join(i.to_string()))?;
        }
        let script = container_script(&launch);
        let log_dir = self.runner.work_dir.join("logs");
        std::fs::create_dir_all(&log_dir)?;
        let log_path = log_dir.join(format!(
            "{}_{}_{}.log",
            self.pod.namespace().unwrap_or_default(),
            self.pod.name_any(),
            spec.name
        ));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &net.netns, "/bin/sh", "-c", &script, "sh"])
            .args(&argv)
            .env_clear()
            .envs(&env)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        // Should the runner die without stopping its pods, the kernel kills
        // them (a container that changes its user loses this, though).
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {argv:?}"))?;
        let pid = child.id().context("child exited at once")?;
        let tx = self.exits.0.clone();
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let _ = tx.send((
                i,
                pid,
                status.and_then(|s| {
                    s.code().or_else(|| std::os::unix::process::ExitStatusExt::signal(&s).map(|sig| 128 + sig))
                }),
            ));
        });
        Ok(pid)
    }

    fn exited(&mut self, i: usize, pid: u32, code: Option<i32>) {
        let policy = self.spec_restart_policy();
        let c = &mut self.ctrs[i];
        if c.pid != Some(pid) {
            return;
        }
        let code = code.unwrap_or(-1);
        tracing::info!(pod = %self.key, container = %c.spec.name, pid, code, "container exited");
        let term = json!({
            "exitCode": code,
            "reason": if code == 0 { "Completed" } else { "Error" },
            "startedAt": c.started_at,
            "finishedAt": now(),
            "containerID": format!("podrunner://{pid}"),
        });
        c.pid = None;
        c.ready = false;
        let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
        if restart {
            c.restarts += 1;
            c.last_terminated = Some(term);
            c.waiting =
                Some(("CrashLoopBackOff".into(), format!("back-off {:?} restarting failed container", c.backoff)));
            c.next_start = Some(Instant::now() + c.backoff);
            c.backoff = (c.backoff * 2).min(Duration::from_secs(20));
        } else {
            c.terminated = Some(term);
            c.next_start = None;
        }
    }

    async fn run_probes(&mut self) {
        let Some(net) = self.net.clone() else { return };
        for i in 0..self.ctrs.len() {
            let Some(pid) = self.ctrs[i].pid else { continue };
            let spec = self.ctrs[i].spec.clone();
            let as_ = self.ctrs[i].exec_as;
            let started = self.ctrs[i].started;
            if !started {
                if let Some(p) = &spec.startup_probe
                    && let Some(ok) = Self::probe_due(&mut self.ctrs[i].startup, &spec, net.ip, pid, as_, p).await
                {
                    if ok {
                        self.ctrs[i].started = true;
                    } else {
                        self.kill_for_restart(i, "startup probe failed");
                    }
                }
                continue;
            }
            if let Some(p) = &spec.liveness_probe
                && let Some(false) = Self::probe_due(&mut self.ctrs[i].liveness, &spec, net.ip, pid, as_, p).await
            {
                self.kill_for_restart(i, "liveness probe failed");
                continue;
            }
            if let Some(p) = &spec.readiness_probe
                && let Some(ready) = Self::probe_due(&mut self.ctrs[i].readiness, &spec, net.ip, pid, as_, p).await
            {
                self.ctrs[i].ready = ready;
            }
        }
    }

    /// Runs the probe if due; Some(verdict) once its success or failure
    /// threshold is crossed.
    async fn probe_due(
        st: &mut ProbeState,
        c: &Container,
        ip: std::net::Ipv4Addr,
        pid: u32,
        exec_as: Option<(u32, u32)>,
        p: &Probe,
    ) -> Option<bool> {
        let now = Instant::now();
        let next =
            *st.next.get_or_insert(now + Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64));
        if now < next {
            return None;
        }
        st.next = Some(now + Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64));
        match probe::run(c, ip, pid, exec_as, p).await {
            Ok(()) => {
                st.failures = 0;
                st.successes += 1;
                (st.successes >= p.success_threshold.unwrap_or(1)).then_some(true)
            }
            Err(e) => {
                tracing::debug!(container = %c.name, error = %format!("{e:#}"), "probe failed");
                st.successes = 0;
                st.failures += 1;
                (st.failures >= p.failure_threshold.unwrap_or(3)).then_some(false)
            }
        }
    }

    fn kill_for_restart(&mut self, i: usize, why: &str) {
        if let Some(pid) = self.ctrs[i].pid {
            tracing::info!(pod = %self.key, container = %self.ctrs[i].spec.name, why, "killing container");
            signal_group(pid, libc::SIGKILL);
        }
    }

    async fn push_status(&mut self) {
        let finished = self.ctrs.iter().all(|c| c.terminated.is_some() && c.pid.is_none() && c.next_start.is_none());
        let phase = if finished {
            if self.ctrs.iter().all(|c| c.terminated.as_ref().and_then(|t| t["exitCode"].as_i64()) == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if self.ctrs.iter().all(|c| c.pid.is_some() || c.restarts > 0) {
            "Running"
        } else {
            "Pending"
        };
        let conditions: Vec<Value> = self
            .conditions
            .iter()
            .map(|(ty, (ok, t))| json!({"type": ty, "status": if *ok { "True" } else { "False" }, "lastTransitionTime": t}))
            .collect();
        let gw = self.runner.net.gateway.to_string();
        let mut status = json!({
            "phase": phase,
            "hostIP": gw, "hostIPs": [{"ip": gw}],
            "startTime": self.start_time,
            "conditions": conditions,
            "message": self.message,
            "containerStatuses": self.ctrs.iter().map(|c| c.status(self.image_id(&c.spec))).collect::<Vec<_>>(),
        });
        if let Some(net) = &self.net {
            status["podIP"] = json!(net.ip.to_string());
            status["podIPs"] = json!([{"ip": net.ip.to_string()}]);
        }
        if status == self.last_status {
            return;
        }
        match self
            .api
            .patch_status(&self.pod.name_any(), &PatchParams::default(), &Patch::Merge(json!({"status": status})))
            .await
        {
            Ok(_) => self.last_status = status,
            Err(e) => tracing::warn!(pod = %self.key, error = %e, "status update failed"),
        }
    }

    async fn pre_stop(&self, i: usize, deadline: Instant) -> Result<()> {
        let c = &self.ctrs[i];
        let (Some(pid), Some(handler)) = (c.pid, c.spec.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())) else {
            return Ok(());
        };
        let net = self.net.as_ref().context("no network")?;
        let left = deadline.saturating_duration_since(Instant::now());
        let run = async {
            match handler {
                LifecycleHandler { http_get: Some(h), .. } => probe::http_get(&c.spec, net.ip, h, left).await,
                LifecycleHandler { exec: Some(e), .. } => probe::exec(pid, c.exec_as, e, left).await,
                LifecycleHandler { sleep: Some(s), .. } => {
                    tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
                    Ok(())
                }
                _ => bail!("preStop handler type not supported"),
            }
        };
        tokio::time::timeout(left, run).await.context("preStop hook did not finish within the grace period")?
    }

    /// Graceful termination of every running container: preStop, SIGTERM,
    /// SIGKILL when the grace period ends.
    async fn terminate(&mut self, grace: Duration, pre_stop: bool) {
        let deadline = Instant::now() + grace;
        let running: Vec<usize> = (0..self.ctrs.len()).filter(|&i| self.ctrs[i].pid.is_some()).collect();
        let this = &*self;
        let hooks = running
            .iter()
            .filter(|_| pre_stop && !grace.is_zero())
            .map(|&i| async move { (i, this.pre_stop(i, deadline).await) });
        for (i, r) in futures::future::join_all(hooks).await {
            match r {
                Ok(()) => tracing::info!(pod = %self.key, container = %self.ctrs[i].spec.name, "preStop done"),
                Err(e) => {
                    tracing::warn!(pod = %self.key, container = %self.ctrs[i].spec.name, error = %format!("{e:#}"), "preStop failed")
                }
            }
        }
        // No grace at all (the pod object vanished: a forced deletion): SIGKILL.
        let sig = if grace.is_zero() { libc::SIGKILL } else { libc::SIGTERM };
        for &i in &running {
            if let Some(pid) = self.ctrs[i].pid {
                signal_group(pid, sig);
            }
        }
        // Kubelet gives at least 2 s after preStop before SIGKILL.
        let deadline =
            if grace.is_zero() { Instant::now() } else { deadline.max(Instant::now() + Duration::from_secs(2)) };
        while self.ctrs.iter().any(|c| c.pid.is_some()) {
            tokio::select! {
                Some((i, pid, code)) = self.exits.1.recv() => { self.ctrs[i].next_start = None; self.exited_final(i, pid, code) },
                _ = tokio::time::sleep_until(deadline) => {
                    for c in &self.ctrs {
                        if let Some(pid) = c.pid {
                            tracing::warn!(pod = %self.key, container = %c.spec.name, "grace period over: SIGKILL");
                            signal_group(pid, libc::SIGKILL);
                        }
                    }
                    // Reap them (SIGKILL cannot be ignored), bounded all the same.
                    let hard = Instant::now() + Duration::from_secs(10);
                    while self.ctrs.iter().any(|c| c.pid.is_some()) {
                        tokio::select! {
                            Some((i, pid, code)) = self.exits.1.recv() => self.exited_final(i, pid, code),
                            _ = tokio::time::sleep_until(hard) => break,
                        }
                    }
                    break;
                }
            }
        }
    }

    fn exited_final(&mut self, i: usize, pid: u32, code: Option<i32>) {
        if self.ctrs[i].pid == Some(pid) {
            tracing::info!(pod = %self.key, container = %self.ctrs[i].spec.name, pid, code, "container stopped");
            self.ctrs[i].pid = None;
            self.ctrs[i].ready = false;
            self.ctrs[i].next_start = None;
        }
    }

    async fn teardown(&mut self, outcome: Outcome) {
        let grace = match outcome {
            Outcome::Deleted => Duration::from_secs(
                self.pod
                    .metadata
                    .deletion_grace_period_seconds
                    .or(self.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
                    .unwrap_or(30)
                    .max(0) as u64,
            ),
            Outcome::Shutdown => Duration::from_secs(5),
            Outcome::Gone | Outcome::Finished => Duration::ZERO,
        };
        tracing::info!(pod = %self.key, ?grace, "stopping pod");
        self.terminate(grace, matches!(outcome, Outcome::Deleted)).await;
        if let Some(net) = self.net.take() {
            remove_stage(&stage_dir(&net.netns));
            self.runner.unregister_netns(&self.pod.uid().unwrap_or_default());
            self.runner.net.remove_pod(&net).await;
        }
        if !matches!(outcome, Outcome::Shutdown) {
            // Volumes that are directories of this pod go with it; PVC
            // directories live elsewhere and stay.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        match outcome {
            Outcome::Deleted => {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions { uid: self.pod.uid(), resource_version: None }),
                    ..DeleteParams::default()
                };
                match self.api.delete(&self.pod.name_any(), &dp).await {
                    Ok(_) => tracing::info!(pod = %self.key, "pod deleted"),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => tracing::warn!(pod = %self.key, error = %e, "final pod deletion failed"),
                }
            }
            Outcome::Finished => self.push_status().await,
            Outcome::Gone | Outcome::Shutdown => {}
        }
    }
}

/// A bind mount of a container: the host directory `source` at `target`.
struct Bind {
    source: PathBuf,
    target: String,
    read_only: bool,
}

/// An OCI container's root file system: an overlay of the unpacked image.
struct RootFs {
    /// The unpacked image: the overlay's lower layer, never written.
    image: PathBuf,
    /// This start's writable layer, and overlayfs's work directory.
    upper: PathBuf,
    work: PathBuf,
    /// Where the root is mounted (an empty directory on the host).
    mount: PathBuf,
    /// `podrunner` itself, whose `container-exec` enters the root.
    helper: PathBuf,
    exec: crate::oci::ExecSpec,
}

/// How a container starts: what [container_script] needs.
struct Launch {
    /// The container's staging directory: bind `i` is staged at `stage/i`.
    stage: PathBuf,
    /// Shortest target first.
    binds: Vec<Bind>,
    /// securityContext.readOnlyRootFilesystem.
    read_only_root: bool,
    working_dir: Option<String>,
    /// (uid, gid, supplementary groups) for setpriv (host-binary containers).
    run_as: Option<(i64, i64, Vec<i64>)>,
    /// An OCI container's root; None: the host's file system.
    root: Option<RootFs>,
}

impl Launch {
    fn new(
        stage: PathBuf,
        mut binds: Vec<Bind>,
        read_only_root: bool,
        working_dir: Option<String>,
        run_as: Option<(i64, i64, Vec<i64>)>,
        root: Option<RootFs>,
    ) -> Launch {
        // Shortest target first, so nested mounts land on top.
        binds.sort_by_key(|b| b.target.len());
        Launch { stage, binds, read_only_root, working_dir, run_as, root }
    }
}

/// Is `path` strictly below one of `targets`?
fn below_a_target<'a>(path: &str, mut targets: impl Iterator<Item = &'a str>) -> bool {
    let p = std::path::Path::new(path);
    targets.any(|t| {
        let t = std::path::Path::new(t);
        p != t && p.starts_with(t)
    })
}

/// What a runtime mounts in a container's /dev (a tmpfs): these device nodes
/// of the host, bind-mounted.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The script `ip netns exec NETNS /bin/sh -c SCRIPT sh ARGV...` runs to
/// start a container: in the mount namespace `ip netns exec` made (a slave of
/// the host's: no mount made here propagates back), it mounts the volumes,
/// makes the rest read-only for readOnlyRootFilesystem, and execs ARGV.
///
/// Host-binary container: the container sees the host's file system. Read-only
/// root: every mount of the namespace is remounted read-only with
/// `remount,bind,ro`, which changes that mount of this namespace only (a
/// remount without `bind` would change the file system itself, for the host
/// too), except what a container runtime leaves writable (/dev, /dev/shm,
/// /proc, and the kubelet's /etc/hosts and /etc/resolv.conf). Volumes are
/// mounted afterwards, so they stay writable unless `readOnly`; /tmp is
/// writable only with a volume there. Mount points on the root file system
/// (and the working directory) are made before it turns read-only; those
/// below another volume are made in that volume, once mounted.
///
/// OCI container: its root is an overlay of the unpacked image (this start's
/// own writable layer on top) mounted at an empty directory; mount points are
/// made in it, then it turns read-only for readOnlyRootFilesystem (that mount
/// only), then what a runtime provides goes on top (/proc, a read-only /sys,
/// a tmpfs /dev with the usual devices and /dev/shm, the pod's /etc/hosts and
/// /etc/resolv.conf), then the volumes, and `podrunner container-exec`
/// chroots into it, changes to the working directory and the user, and execs
/// ARGV with the container's PATH.
fn container_script(l: &Launch) -> String {
    let q = |p: &std::path::Path| shell_quote(&p.to_string_lossy());
    let staged = |i: usize| q(&l.stage.join(i.to_string()));
    let targets = || l.binds.iter().map(|b| b.target.as_str());
    // Where a path of the container is in this mount namespace: in an OCI
    // container's root, resolved in the image (symlinks followed inside it).
    let at = |path: &str| match &l.root {
        Some(r) => q(&r.mount.join(crate::oci::resolve_in_root(&r.image, path).trim_start_matches('/'))),
        None => shell_quote(path),
    };
    let mut s = String::from("set -e\n");
    for (i, b) in l.binds.iter().enumerate() {
        s.push_str(&format!("mount --bind {} {}\n", q(&b.source), staged(i)));
    }
    if let Some(r) = &l.root {
        s.push_str(&format!(
            "# the container's root: an overlay of the image\n\
             mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}\n\
             mkdir -p {} {} {} {}\n\
             for f in hosts resolv.conf; do [ -e {}/\"$f\" ] || : > {}/\"$f\"; done\n",
            r.image.display(),
            r.upper.display(),
            r.work.display(),
            q(&r.mount),
            at("/proc"),
            at("/sys"),
            at("/dev"),
            at("/etc"),
            at("/etc"),
            at("/etc"),
        ));
    }
    for b in &l.binds {
        if !below_a_target(&b.target, targets()) {
            s.push_str(&format!("mkdir -p {}\n", at(&b.target)));
        }
    }
    let wd_in_volume = l.working_dir.as_deref().is_some_and(|wd| below_a_target(wd, targets()));
    if let Some(wd) = l.working_dir.as_deref().filter(|_| !wd_in_volume) {
        s.push_str(&format!("mkdir -p {}\n", at(wd)));
    }
    match (&l.root, l.read_only_root) {
        (Some(r), true) => s.push_str(&format!("# readOnlyRootFilesystem\nmount -o remount,bind,ro {}\n", q(&r.mount))),
        (None, true) => {
            let stage_root = shell_quote(STAGE_ROOT);
            s.push_str(&format!(
                "# readOnlyRootFilesystem\n\
                 set -f\n\
                 for m in $(cut -d' ' -f5 /proc/self/mountinfo); do\n\
                 \x20 m=$(printf '%b' \"$m\")\n\
                 \x20 case \"$m\" in\n\
                 \x20   /dev|/dev/*|/proc|/proc/*|/etc/hosts|/etc/resolv.conf|{stage_root}|{stage_root}/*) ;;\n\
                 \x20   /) mount -o remount,bind,ro / ;;\n\
                 \x20   *) mount -o remount,bind,ro \"$m\" || echo \"podrunner: $m stays writable\" >&2 ;;\n\
                 \x20 esac\n\
                 done\n\
                 set +f\n"
            ));
        }
        (_, false) => {}
    }
    if l.root.is_some() {
        let dev = at("/dev");
        s.push_str(&format!(
            "# what a runtime provides\n\
             mount -t proc -o nosuid,nodev,noexec proc {}\n\
             mount -t sysfs -o ro,nosuid,nodev,noexec sysfs {}\n\
             mount -t tmpfs -o nosuid,mode=0755,size=65536k tmpfs {dev}\n\
             for d in {}; do : > {dev}/\"$d\"; mount --bind /dev/\"$d\" {dev}/\"$d\"; done\n\
             mkdir {dev}/shm\n\
             mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=65536k shm {dev}/shm\n\
             ln -s /proc/self/fd {dev}/fd\n\
             ln -s /proc/self/fd/0 {dev}/stdin\n\
             ln -s /proc/self/fd/1 {dev}/stdout\n\
             ln -s /proc/self/fd/2 {dev}/stderr\n\
             mount --bind /etc/hosts {}\n\
             mount --bind /etc/resolv.conf {}\n",
            at("/proc"),
            at("/sys"),
            DEVICES.join(" "),
            at("/etc/hosts"),
            at("/etc/resolv.conf"),
        ));
    }
    for (i, b) in l.binds.iter().enumerate() {
        let t = at(&b.target);
        if below_a_target(&b.target, targets()) {
            s.push_str(&format!("mkdir -p {t}\n"));
        }
        s.push_str(&format!("mount --bind {} {t}\n", staged(i)));
        if b.read_only {
            s.push_str(&format!("mount -o remount,bind,ro {t}\n"));
        }
    }
    if let Some(wd) = &l.working_dir {
        if wd_in_volume {
            s.push_str(&format!("mkdir -p {}\n", at(wd)));
        }
        if l.root.is_none() {
            s.push_str(&format!("cd {}\n", shell_quote(wd)));
        }
    }
    match (&l.root, &l.run_as) {
        (Some(r), _) => {
            let args: Vec<String> = r.exec.args().iter().map(|a| shell_quote(a)).collect();
            s.push_str(&format!("exec {} {} -- \"$@\"\n", q(&r.helper), args.join(" ")));
        }
        (None, Some((uid, gid, groups))) => {
            let groups = if groups.is_empty() {
                "--clear-groups".to_string()
            } else {
                format!("--groups={}", groups.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(","))
            };
            s.push_str(&format!("exec setpriv --reuid={uid} --regid={gid} {groups} -- \"$@\"\n"));
        }
        (None, None) => s.push_str("exec \"$@\"\n"),
    }
    s
}
/// The container's (user, group, runAsNonRoot), container settings first.
fn run_as(psc: &k8s_openapi::api::core::v1::PodSecurityContext, c: &Container) -> (Option<i64>, Option<i64>, bool) {
    let csc = c.security_context.clone().unwrap_or_default();
    (
        csc.run_as_user.or(psc.run_as_user),
        csc.run_as_group.or(psc.run_as_group),
        csc.run_as_non_root.or(psc.run_as_non_root).unwrap_or(false),
    )
}

/// Signals the container's process group (it leads one).
pub fn signal_group(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; a stale pid is an ESRCH error.
    unsafe {
        libc::kill(-(pid as i32), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(read_only_root: bool) -> Launch {
        let bind =
            |source: &str, target: &str, read_only| Bind { source: source.into(), target: target.into(), read_only };
        Launch {
            stage: PathBuf::from("/.podrunner-stage/skv-1/c"),
            binds: vec![
                bind("/w/tmp", "/tmp", false),
                bind("/w/data", "/var/lib/app", false),
                bind("/w/token", "/var/lib/app/token", true),
            ],
            read_only_root,
            working_dir: Some("/var/lib/app/work".into()),
            run_as: Some((10001, 10001, vec![10001])),
            root: None,
        }
    }

    /// The index of the line of `script` that is `line`.
    fn at(script: &str, line: &str) -> usize {
        script.lines().position(|l| l == line).unwrap_or_else(|| panic!("no line {line:?} in:\n{script}"))
    }

    #[test]
    fn read_only_root_comes_after_mount_points_and_before_the_volumes() {
        let s = container_script(&launch(true));
        let ro_root = at(&s, "    /) mount -o remount,bind,ro / ;;");
        // Volumes are staged, and mount points on the root made, while it is writable.
        assert!(at(&s, "mount --bind '/w/data' '/.podrunner-stage/skv-1/c/1'") < ro_root);
        assert!(at(&s, "mkdir -p '/var/lib/app'") < ro_root);
        assert!(at(&s, "mkdir -p '/tmp'") < ro_root);
        // Volumes are mounted over the read-only root, so they stay writable
        // (unless readOnly); a mount point below a volume is made in it.
        assert!(ro_root < at(&s, "mount --bind '/.podrunner-stage/skv-1/c/0' '/tmp'"));
        assert!(
            at(&s, "mount --bind '/.podrunner-stage/skv-1/c/1' '/var/lib/app'")
                < at(&s, "mkdir -p '/var/lib/app/token'")
        );
        assert!(
            at(&s, "mkdir -p '/var/lib/app/token'")
                < at(&s, "mount --bind '/.podrunner-stage/skv-1/c/2' '/var/lib/app/token'")
        );
        assert!(
            at(&s, "mount --bind '/.podrunner-stage/skv-1/c/2' '/var/lib/app/token'")
                < at(&s, "mount -o remount,bind,ro '/var/lib/app/token'")
        );
        // The working directory is in a volume: made there.
        assert!(
            at(&s, "mount --bind '/.podrunner-stage/skv-1/c/1' '/var/lib/app'")
                < at(&s, "mkdir -p '/var/lib/app/work'")
        );
        assert!(at(&s, "mkdir -p '/var/lib/app/work'") < at(&s, "cd '/var/lib/app/work'"));
        // What a runtime leaves writable, and the staged volumes, are not touched.
        assert!(s.contains(
            "/dev|/dev/*|/proc|/proc/*|/etc/hosts|/etc/resolv.conf|'/.podrunner-stage'|'/.podrunner-stage'/*) ;;"
        ));
        assert!(s.ends_with("exec setpriv --reuid=10001 --regid=10001 --groups=10001 -- \"$@\"\n"));
        // Never a remount of a file system itself (that would reach the host): always `bind`.
        for l in s.lines().filter(|l| l.contains("remount")) {
            assert!(l.contains("remount,bind,ro"), "{l}");
        }
    }

    #[test]
    fn without_read_only_root_the_root_stays_as_it_is() {
        let s = container_script(&Launch { run_as: None, ..launch(false) });
        assert!(!s.contains("mountinfo"));
        assert_eq!(s.matches("remount").count(), 1, "only the readOnly volume:\n{s}");
        assert!(at(&s, "mkdir -p '/tmp'") < at(&s, "mount --bind '/.podrunner-stage/skv-1/c/0' '/tmp'"));
        assert!(s.ends_with("cd '/var/lib/app/work'\nexec \"$@\"\n"));
    }

    const ROOT: &str = "/.podrunner-stage/skv-1/node/root";

    fn oci_launch(read_only_root: bool) -> Launch {
        let bind =
            |source: &str, target: &str, read_only| Bind { source: source.into(), target: target.into(), read_only };
        let exec = crate::oci::ExecSpec {
            root: ROOT.into(),
            cwd: "/var/lib/shardkv".into(),
            uid: 10001,
            gid: 10001,
            groups: vec![10001],
            no_new_privs: true,
        };
        Launch::new(
            "/.podrunner-stage/skv-1/node".into(),
            vec![
                bind("/w/data", "/var/lib/shardkv", false),
                bind("/w/token", "/var/lib/shardkv/token", true),
                bind("/w/tmp", "/tmp", false),
            ],
            read_only_root,
            Some("/var/lib/shardkv".into()),
            None,
            Some(RootFs {
                image: "/w/images/sha256-ab/rootfs".into(),
                upper: "/w/pods/p/containers/node/upper".into(),
                work: "/w/pods/p/containers/node/work".into(),
                mount: ROOT.into(),
                helper: "/bin/podrunner".into(),
                exec,
            }),
        )
    }

    #[test]
    fn an_oci_container_runs_in_an_overlay_of_its_image() {
        let s = container_script(&oci_launch(true));
        let r = |p: &str| format!("'{ROOT}{p}'");
        let overlay = at(
            &s,
            &format!(
                "mount -t overlay overlay -o lowerdir=/w/images/sha256-ab/rootfs,\
                 upperdir=/w/pods/p/containers/node/upper,workdir=/w/pods/p/containers/node/work '{ROOT}'"
            ),
        );
        let ro_root = at(&s, &format!("mount -o remount,bind,ro '{ROOT}'"));
        // Mount points are made in the overlay (never in the image), before
        // the root turns read-only; the volumes' below another one after it.
        assert!(overlay < at(&s, &format!("mkdir -p {} {} {} {}", r("/proc"), r("/sys"), r("/dev"), r("/etc"))));
        assert!(overlay < at(&s, &format!("mkdir -p {}", r("/tmp"))));
        assert!(at(&s, &format!("mkdir -p {}", r("/tmp"))) < ro_root);
        assert!(at(&s, &format!("mkdir -p {}", r("/var/lib/shardkv"))) < ro_root);
        // Then what a runtime provides, and the volumes, on top.
        for line in [
            format!("mount -t proc -o nosuid,nodev,noexec proc {}", r("/proc")),
            format!("mount -t sysfs -o ro,nosuid,nodev,noexec sysfs {}", r("/sys")),
            format!("mount -t tmpfs -o nosuid,mode=0755,size=65536k tmpfs {}", r("/dev")),
            format!("mount --bind /etc/hosts {}", r("/etc/hosts")),
            format!("mount --bind /etc/resolv.conf {}", r("/etc/resolv.conf")),
            format!("mount --bind '/.podrunner-stage/skv-1/node/0' {}", r("/tmp")),
            format!("mount --bind '/.podrunner-stage/skv-1/node/1' {}", r("/var/lib/shardkv")),
        ] {
            assert!(ro_root < at(&s, &line), "{line}");
        }
        let token = r("/var/lib/shardkv/token");
        assert!(
            at(&s, &format!("mount --bind '/.podrunner-stage/skv-1/node/1' {}", r("/var/lib/shardkv")))
                < at(&s, &format!("mkdir -p {token}"))
        );
        assert!(
            at(&s, &format!("mount --bind '/.podrunner-stage/skv-1/node/2' {token}"))
                < at(&s, &format!("mount -o remount,bind,ro {token}"))
        );
        // The host's mounts are left alone; the helper changes directory
        // inside the root, then the user, then execs.
        assert!(!s.contains("mountinfo"));
        assert!(!s.lines().any(|l| l.starts_with("cd ")));
        assert!(s.ends_with(&format!(
            "exec '/bin/podrunner' 'container-exec' '--root={ROOT}' '--cwd=/var/lib/shardkv' '--user=10001:10001' \
             '--groups=10001' '--no-new-privs' -- \"$@\"\n"
        )));
        let rw = container_script(&oci_launch(false));
        assert!(!rw.contains(&format!("remount,bind,ro '{ROOT}'")));
        assert_eq!(rw.matches("remount").count(), 1, "only the readOnly volume:\n{rw}");
    }

    #[test]
    fn below_a_target_compares_whole_components() {
        let targets = ["/data", "/tmp"];
        assert!(below_a_target("/data/x", targets.iter().copied()));
        assert!(!below_a_target("/data", targets.iter().copied()));
        assert!(!below_a_target("/database", targets.iter().copied()));
    }

    /// Runs a container script for real, as root (`cargo test -p
    /// shardkv-e2e-podrunner -- --ignored`): in a mount namespace like the
    /// one `ip netns exec` makes, with a read-only root, a writable and a
    /// read-only volume. The host's root must still be writable afterwards.
    #[test]
    #[ignore = "needs root: mounts in a new mount namespace"]
    fn read_only_root_for_real() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: not root");
            return;
        }
        let id = std::process::id();
        let base = std::env::temp_dir().join(format!("podrunner-ro-test-{id}"));
        let stage = PathBuf::from(STAGE_ROOT).join(format!("test-{id}"));
        let (rw, ro) = (base.join("rw"), base.join("ro"));
        let (mnt_rw, mnt_ro) = (base.join("mnt/rw"), base.join("mnt/ro"));
        for d in [&rw, &ro, &stage.join("0"), &stage.join("1")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let s = |p: &PathBuf| p.to_string_lossy().into_owned();
        let script = container_script(&Launch {
            stage: stage.clone(),
            binds: vec![
                Bind { source: rw.clone(), target: s(&mnt_rw), read_only: false },
                Bind { source: ro.clone(), target: s(&mnt_ro), read_only: true },
            ],
            read_only_root: true,
            working_dir: Some(s(&mnt_rw)),
            run_as: None,
            root: None,
        });
        let probe = format!(
            "fail() {{ echo \"$*\" >&2; exit 1; }}\n\
             echo ok > written\n\
             if touch {ro}/x 2>/dev/null; then fail 'the readOnly volume is writable'; fi\n\
             if touch /.podrunner-ro-test 2>/dev/null; then fail 'the root is writable'; fi\n\
             if touch {base}/outside 2>/dev/null; then fail '{base} is writable'; fi\n\
             echo x > /dev/null\n\
             touch /dev/shm/podrunner-ro-test-{id} || fail '/dev/shm is not writable'\n\
             rm /dev/shm/podrunner-ro-test-{id}\n",
            ro = s(&mnt_ro),
            base = s(&base),
        );
        let out = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "/bin/sh", "-c", &script, "sh", "/bin/sh", "-ec", &probe])
            .output()
            .unwrap();
        let host_root_writable = std::fs::File::create("/.podrunner-ro-test-host").is_ok();
        let _ = std::fs::remove_file("/.podrunner-ro-test-host");
        let written = std::fs::read_to_string(rw.join("written"));
        let _ = std::fs::remove_file("/.podrunner-ro-test"); // should the probe have made it
        let _ = std::fs::remove_dir_all(&base);
        remove_stage(&stage);
        let _ = std::fs::remove_dir(STAGE_ROOT);
        assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(written.unwrap(), "ok\n");
        assert!(host_root_writable, "the host's root is no longer writable");
    }

    /// Runs an OCI container for real, as root (`cargo build -p
    /// shardkv-e2e-podrunner && cargo test -p shardkv-e2e-podrunner --
    /// --ignored`: `container-exec` is the built binary): a root file system
    /// holding only dash and libc, read-only and then writable, a volume, a
    /// user, supplementary groups and no_new_privs, in a mount namespace like
    /// the one `ip netns exec` makes. The image must stay as it was.
    #[test]
    #[ignore = "needs root: overlay and bind mounts in a new mount namespace"]
    fn oci_container_for_real() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: not root");
            return;
        }
        let helper = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("podrunner");
        assert!(helper.is_file(), "{} missing: cargo build -p shardkv-e2e-podrunner first", helper.display());
        let id = std::process::id();
        let base = std::env::temp_dir().join(format!("podrunner-oci-real-{id}"));
        let image = base.join("rootfs");
        for d in ["usr/bin", "usr/lib/x86_64-linux-gnu", "usr/lib64", "etc", "run", "var"] {
            std::fs::create_dir_all(image.join(d)).unwrap();
        }
        // As in Debian: a volume at /var/run/... lands in the image's /run, never the host's.
        std::os::unix::fs::symlink("/run", image.join("var/run")).unwrap();
        let host_run_probe = PathBuf::from(format!("/run/podrunner-oci-real-{id}"));
        std::fs::copy("/usr/bin/dash", image.join("usr/bin/dash")).unwrap();
        std::os::unix::fs::symlink("dash", image.join("usr/bin/sh")).unwrap();
        for lib in ["usr/lib/x86_64-linux-gnu/libc.so.6", "usr/lib64/ld-linux-x86-64.so.2"] {
            std::fs::copy(std::fs::canonicalize(PathBuf::from("/").join(lib)).unwrap(), image.join(lib)).unwrap();
        }
        for (link, to) in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")] {
            std::os::unix::fs::symlink(to, image.join(link)).unwrap();
        }
        std::fs::create_dir_all(image.join("tmp")).unwrap();
        std::fs::set_permissions(image.join("tmp"), std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
        let (vol, vol2) = (base.join("vol"), base.join("vol2"));
        for v in [&vol, &vol2] {
            std::fs::create_dir_all(v).unwrap();
            std::os::unix::fs::chown(v, Some(65534), Some(65534)).unwrap();
        }
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let hosts_first = hosts.lines().next().unwrap_or_default().to_string();
        let probe = r#"fail() { echo "$*" >&2; exit 1; }
            [ "$(pwd)" = /data ] || fail "working directory $(pwd)"
            while read -r k a b; do case "$k" in Uid:) uid=$a;; Gid:) gid=$a;; Groups:) groups="$a $b";;
              NoNewPrivs:) nnp=$a;; esac; done < /proc/self/status
            [ "$uid" = 65534 ] && [ "$gid" = 65534 ] || fail "uid $uid gid $gid"
            [ "$groups" = "4242 " ] || fail "groups '$groups'"
            [ "$nnp" = 1 ] || fail "no_new_privs $nnp"
            [ -e /usr/bin/dash ] && [ ! -e /etc/debian_version ] || fail "not in the image's root"
            read -r line < /etc/hosts || true
            [ "$line" = "$HOSTS_FIRST" ] || fail "/etc/hosts: $line"
            echo ok > /data/written || fail "the volume is not writable"
            echo ok > "/var/run/$RUN_PROBE/x" || fail "the volume below the /var/run symlink is not there"
            echo x > /dev/null || fail "/dev/null"
            : > /dev/shm/x || fail "/dev/shm is not writable"
            if [ "$READ_ONLY" = 1 ]; then
              if (: > /tmp/x) 2>/dev/null; then fail "/tmp is writable with a read-only root"; fi
            else
              : > /tmp/x || fail "/tmp is not writable"
            fi"#;
        for read_only_root in [true, false] {
            let stage = PathBuf::from(STAGE_ROOT).join(format!("test-oci-{id}"));
            let (upper, work, mount) = (base.join("upper"), base.join("work"), stage.join("root"));
            let _ = std::fs::remove_dir_all(&upper);
            let _ = std::fs::remove_dir_all(&work);
            for d in [&upper, &work, &mount, &stage.join("0"), &stage.join("1")] {
                std::fs::create_dir_all(d).unwrap();
            }
            let exec = crate::oci::ExecSpec {
                root: mount.clone(),
                cwd: "/data".into(),
                uid: 65534,
                gid: 65534,
                groups: vec![4242],
                no_new_privs: true,
            };
            let root = RootFs { image: image.clone(), upper: upper.clone(), work, mount, helper: helper.clone(), exec };
            let launch = Launch::new(
                stage.clone(),
                vec![
                    Bind { source: vol.clone(), target: "/data".into(), read_only: false },
                    Bind {
                        source: vol2.clone(),
                        target: format!("/var/run/{}", host_run_probe.file_name().unwrap().to_string_lossy()),
                        read_only: false,
                    },
                ],
                read_only_root,
                Some("/data".into()),
                None,
                Some(root),
            );
            let script = container_script(&launch);
            let out = std::process::Command::new("unshare")
                .args(["--mount", "--propagation", "slave", "/bin/sh", "-c", &script, "sh", "sh", "-c", probe])
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOSTS_FIRST", &hosts_first)
                .env("READ_ONLY", if read_only_root { "1" } else { "0" })
                .env("RUN_PROBE", host_run_probe.file_name().unwrap())
                .output()
                .unwrap();
            remove_stage(&stage);
            let written = std::fs::read_to_string(vol.join("written"));
            let _ = std::fs::remove_file(vol.join("written"));
            let upper_tmp = upper.join("tmp/x").exists();
            let host_run_touched = host_run_probe.exists();
            let _ = std::fs::remove_dir_all(&host_run_probe);
            let in_vol2 = vol2.join("x").exists();
            if !out.status.success() {
                let _ = std::fs::remove_dir_all(&base);
                panic!("read-only {read_only_root}: {}\n{script}", String::from_utf8_lossy(&out.stderr));
            }
            assert_eq!(written.unwrap(), "ok\n");
            assert!(in_vol2 && !host_run_touched, "a mount target followed a symlink out of the root");
            // Writes went to this start's layer, never to the image.
            assert_eq!(upper_tmp, !read_only_root);
            assert!(!image.join("tmp/x").exists() && !image.join("etc/hosts").exists(), "the image was written");
        }
        let _ = std::fs::remove_dir_all(&base);
        let _ = std::fs::remove_dir(STAGE_ROOT);
    }
}
