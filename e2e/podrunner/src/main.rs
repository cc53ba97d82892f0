//! podrunner: stands in for the kubelet in the e2e suite (and for the
//! scheduler and a volume provisioner, which a one-node cluster needs too).
//!
//! It registers a Node and keeps its Lease fresh, binds pending pods to it,
//! provisions claims as directories, and runs every container of its pods as a
//! local process in the pod's own network namespace (a real address on a
//! bridge), with env, the downward API, volumes bind-mounted at their mount
//! paths, cluster DNS names from Services in the pod's /etc/hosts, probes,
//! restarts, and graceful deletion. Containers run from an OCI image
//! (`--oci-image`, chrooted into its unpacked root file system, as a runtime
//! runs them) or, for test-only images, as a host binary (`--image`). See
//! e2e/README.md.

mod dns;
mod env;
mod forward;
mod net;
mod oci;
mod pod;
mod probe;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::net::{PodNet, PodNetwork};

#[derive(Parser, Debug)]
#[command(about = "Runs the pods of a one-node e2e cluster as local processes (kubelet stand-in)")]
struct Args {
    /// Name of the Node this runner registers.
    #[arg(long, default_value = "e2e-node")]
    node_name: String,
    /// Pod directories, claim directories and container logs (logs/).
    #[arg(long)]
    work_dir: PathBuf,
    /// IMAGE=OCI_LAYOUT_DIR[:REF]: containers of IMAGE run from this OCI
    /// image (repeatable), unpacked once into WORK/images/ with umoci, each
    /// in its own overlay of it, with the image's Entrypoint, Cmd, Env,
    /// WorkingDir and User (Kubernetes rules).
    #[arg(long = "oci-image", value_parser = oci::parse_spec)]
    oci_images: Vec<(String, PathBuf, Option<String>)>,
    /// IMAGE=PATH: containers of IMAGE run the host binary PATH (repeatable),
    /// in the host's file system: the fallback for test-only images that have
    /// no OCI image. A container `command` names a binary in PATH's directory.
    #[arg(long = "image", value_parser = parse_image)]
    images: Vec<(String, PathBuf)>,
    /// Pod network, a /16; the bridge holds its .0.1 (the node address).
    #[arg(long, default_value = "10.213.0.0/16")]
    pod_cidr: String,
    /// Name of the bridge.
    #[arg(long, default_value = "skve2e0")]
    bridge: String,
    /// Pod network namespaces are named PREFIX<pod uid>; at start the runner
    /// removes every namespace so named (a killed runner's). A second runner
    /// on the machine needs its own prefix, bridge and --pod-cidr.
    #[arg(long, default_value = "skv-")]
    netns_prefix: String,
    /// Port on the node address forwarded to the API server for pods
    /// (KUBERNETES_SERVICE_HOST/PORT point there).
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// Cluster DNS domain for pod host names.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// StorageClass (made default) whose claims this runner provisions.
    #[arg(long, default_value = "shardkv-e2e")]
    storage_class: String,
    /// The kubelet's credentials (user system:node:NAME, group system:nodes),
    /// held to the Node authorizer: node, lease, its pods' status, tokens,
    /// and the objects its pods reference. Default: KUBECONFIG.
    #[arg(long)]
    node_kubeconfig: Option<PathBuf>,
    /// The scheduler's credentials (system:kube-scheduler): watching pods and
    /// binding them. Default: KUBECONFIG. The provisioner always uses KUBECONFIG.
    #[arg(long)]
    scheduler_kubeconfig: Option<PathBuf>,
}

async fn client_from(path: Option<&PathBuf>) -> Result<(Client, kube::Config)> {
    let config = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p).with_context(|| format!("reading {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await.context("loading the kubeconfig (KUBECONFIG)")?,
    };
    Ok((Client::try_from(config.clone())?, config))
}

fn parse_image(s: &str) -> Result<(String, PathBuf), String> {
    let (image, path) = s.split_once('=').ok_or("expected IMAGE=PATH")?;
    let path = std::fs::canonicalize(path).map_err(|e| format!("{path}: {e}"))?;
    Ok((image.to_string(), path))
}

/// What pod workers share.
pub struct Runner {
    /// The kubelet's client (node credentials).
    pub client: Client,
    pub node: String,
    pub work_dir: PathBuf,
    /// Host-binary images (--image).
    pub images: HashMap<String, PathBuf>,
    /// OCI images (--oci-image), unpacked.
    pub oci: HashMap<String, Arc<oci::OciImage>>,
    /// This binary: `container-exec` enters an OCI container's root.
    pub helper: PathBuf,
    pub net: PodNetwork,
    pub api_port: u16,
    pub shutdown: CancellationToken,
    /// Cluster DNS domain.
    pub cluster_domain: String,
    /// The cluster DNS, and the running pods whose /etc/hosts it feeds.
    dns: Mutex<Dns>,
    /// Mount points that did not exist on the host before a container's
    /// `mkdir -p` made them (empty there: the mounts live in the containers'
    /// namespaces); removed with rmdir when the runner stops.
    mountpoints: Mutex<std::collections::BTreeSet<PathBuf>>,
}

impl Runner {
    /// Writes the pod's /etc/hosts and resolv.conf (`ip netns exec` mounts
    /// them) and keeps the hosts file current from now on.
    pub fn register_netns(&self, uid: &str, net: &PodNet, pod: &Pod) {
        let dir = net::netns_etc(&net.netns);
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join("resolv.conf"), b"# pod runner: names resolve through /etc/hosts\n");
        let me = dns::PodIdentity::of(pod, &net.ip.to_string(), &self.cluster_domain);
        let mut dns = self.dns.lock().unwrap();
        let content = dns::hosts_file(&dns.records, &me, &self.cluster_domain);
        if let Err(e) = std::fs::write(dir.join("hosts"), content.as_bytes()) {
            tracing::warn!(netns = %net.netns, error = %e, "writing pod hosts file");
        }
        dns.pods.insert(uid.to_string(), PodHosts { netns: net.netns.clone(), me, written: content });
    }

    /// Records the directories `mkdir -p target` is about to create on the host.
    pub fn note_mountpoint(&self, target: &std::path::Path) {
        let mut set = self.mountpoints.lock().unwrap();
        for dir in target.ancestors() {
            if dir.as_os_str().is_empty() || dir.exists() {
                break;
            }
            set.insert(dir.to_path_buf());
        }
    }

    /// Removes the recorded mount points, deepest first, if empty.
    fn remove_mountpoints(&self) {
        let set = std::mem::take(&mut *self.mountpoints.lock().unwrap());
        let mut dirs: Vec<_> = set.into_iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }

    pub fn unregister_netns(&self, uid: &str) {
        self.dns.lock().unwrap().pods.remove(uid);
    }

    /// Rewrites the hosts files whose content the new cluster DNS changes, in
    /// place (`ip netns exec` bind-mounts them over /etc/hosts: the inode
    /// must stay).
    fn update_dns(&self, records: Vec<dns::Record>) {
        let mut guard = self.dns.lock().unwrap();
        if guard.records == records {
            return;
        }
        let dns = &mut *guard;
        dns.records = records;
        for pod in dns.pods.values_mut() {
            let content = dns::hosts_file(&dns.records, &pod.me, &self.cluster_domain);
            if content == pod.written {
                continue;
            }
            let p = net::netns_etc(&pod.netns).join("hosts");
            match std::fs::OpenOptions::new().write(true).truncate(true).open(&p).and_then(|mut f| {
                use std::io::Write;
                f.write_all(content.as_bytes())
            }) {
                Ok(()) => pod.written = content,
                Err(e) => tracing::warn!(file = %p.display(), error = %e, "updating pod hosts file"),
            }
        }
    }
}

/// The cluster DNS (from the API's pods and Services) and the pods it serves.
#[derive(Default)]
struct Dns {
    records: Vec<dns::Record>,
    /// By pod uid.
    pods: HashMap<String, PodHosts>,
}

/// A running pod's hosts file.
struct PodHosts {
    netns: String,
    me: dns::PodIdentity,
    /// What the file holds now.
    written: String,
}

async fn register_node(client: &Client, name: &str, gateway: &str) -> Result<()> {
    let nodes = Api::<Node>::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "shardkv.dev/e2e-podrunner": "true"}},
    }))?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => tracing::info!(node = name, "node registered"),
        Err(kube::Error::Api(e)) if e.code == 409 => tracing::info!(node = name, "node exists; taking it over"),
        Err(e) => return Err(e).context("registering the node"),
    }
    node_status(client, name, gateway).await
}

async fn node_status(client: &Client, name: &str, gateway: &str) -> Result<()> {
    let now = serde_json::to_value(Time(Timestamp::now()))?;
    let cond = |ty: &str, status: &str, reason: &str, msg: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": msg,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let resources = json!({"cpu": "16", "memory": "64Gi", "pods": "250", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": [
            cond("Ready", "True", "KubeletReady", "shardkv e2e pod runner is posting ready status"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", ""),
        ],
        "addresses": [{"type": "InternalIP", "address": gateway}, {"type": "Hostname", "address": name}],
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "shardkv e2e pod runner",
                     "containerRuntimeVersion": "podrunner://0.1.0", "kubeletVersion": "v1.36.3", "kubeProxyVersion": "",
                     "operatingSystem": "linux", "architecture": "amd64"},
    }});
    Api::<Node>::all(client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .context("node status")?;
    Ok(())
}

/// Renews the node Lease every 10 s (what the node lifecycle controller
/// watches), and re-posts node status every minute.
async fn heartbeat(client: Client, name: String, gateway: String, shutdown: CancellationToken) {
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let mut n = 0u64;
    loop {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                     "renewTime": serde_json::to_value(MicroTime(Timestamp::now())).unwrap()},
        });
        let pp = PatchParams::apply("shardkv-e2e-podrunner").force();
        if let Err(e) = leases.patch(&name, &pp, &Patch::Apply(lease)).await {
            tracing::warn!(error = %e, "renewing the node lease");
        }
        n += 1;
        if n.is_multiple_of(6)
            && let Err(e) = node_status(&client, &name, &gateway).await
        {
            tracing::warn!(error = %format!("{e:#}"), "posting node status");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Binds a pending pod to this node (the scheduler's job; one node, no choice).
async fn bind(client: &Client, pod: &Pod, node: &str) {
    let ns = pod.namespace().unwrap_or_default();
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": pod.name_any(), "uid": pod.uid()},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let r: Result<serde_json::Value, _> =
        api.create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding).await;
    match r {
        Ok(_) => tracing::info!(pod = %format!("{ns}/{}", pod.name_any()), node, "bound"),
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
        Err(e) => tracing::warn!(pod = %format!("{ns}/{}", pod.name_any()), error = %e, "binding failed"),
    }
}

fn reflect<K>(api: Api<K>, wake: Arc<Notify>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream =
        reflector::reflector(writer, watcher(api, watcher::Config::default()).default_backoff()).touched_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "watch error (retrying)");
            }
            wake.notify_one();
        }
    });
    store
}

fn main() -> Result<()> {
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|a| a == oci::EXEC_HELPER) {
        std::process::exit(oci::exec_helper(&argv.collect::<Vec<_>>()));
    }
    runner_main()
}

/// Unpacks the OCI images (once per digest) and checks no image is mapped twice.
async fn load_images(args: &Args, work_dir: &std::path::Path) -> Result<HashMap<String, Arc<oci::OciImage>>> {
    let mut loaded: HashMap<String, Arc<oci::OciImage>> = HashMap::new();
    let mut by_name = HashMap::new();
    for (name, layout, reference) in &args.oci_images {
        if args.images.iter().any(|(n, _)| n == name) || by_name.contains_key(name) {
            anyhow::bail!("image {name} is mapped twice (--oci-image, --image)");
        }
        let key = format!("{}:{}", layout.display(), reference.as_deref().unwrap_or(""));
        let image = match loaded.get(&key) {
            Some(i) => i.clone(),
            None => {
                let i = Arc::new(oci::load(layout, reference.as_deref(), &work_dir.join("images")).await?);
                tracing::info!(image = %name, source = %i.source, digest = %i.digest, rootfs = %i.rootfs.display(), "OCI image unpacked");
                loaded.insert(key, i.clone());
                i
            }
        };
        by_name.insert(name.clone(), image);
    }
    Ok(by_name)
}

#[tokio::main]
async fn runner_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let (admin, config) = client_from(None).await?;
    let upstream = format!(
        "{}:{}",
        config.cluster_url.host().context("API server URL without host")?,
        config.cluster_url.port_u16().unwrap_or(443)
    );
    let (client, _) = client_from(args.node_kubeconfig.as_ref()).await?;
    let (scheduler, _) = client_from(args.scheduler_kubeconfig.as_ref()).await?;
    let work_dir = std::path::absolute(&args.work_dir)?;
    std::fs::create_dir_all(work_dir.join("volumes"))?;
    let oci = load_images(&args, &work_dir).await?;

    let net = PodNetwork::create(&args.bridge, &args.pod_cidr, &args.netns_prefix)
        .await
        .context("creating the pod network (needs root and iproute2)")?;
    let gateway = net.gateway;
    let shutdown = CancellationToken::new();
    let runner = Arc::new(Runner {
        client: client.clone(),
        node: args.node_name.clone(),
        work_dir: work_dir.clone(),
        images: args.images.iter().cloned().collect(),
        oci,
        helper: std::env::current_exe().context("the runner's own path")?,
        net,
        api_port: args.api_port,
        shutdown: shutdown.clone(),
        cluster_domain: args.cluster_domain.clone(),
        dns: Mutex::new(Dns::default()),
        mountpoints: Mutex::new(Default::default()),
    });
    let result = run(runner.clone(), &args, upstream, admin, scheduler).await;
    shutdown.cancel();
    // Pod workers stop their processes (bounded), then the bridge goes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !runner.dns.lock().unwrap().pods.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    runner.net.destroy().await;
    runner.remove_mountpoints();
    let _ = std::fs::remove_dir(pod::STAGE_ROOT);
    tracing::info!(%gateway, "pod runner stopped");
    result
}

/// A pod worker's update channel and task, by pod uid.
type PodWorker = (watch::Sender<Option<Arc<Pod>>>, tokio::task::JoinHandle<()>);

async fn run(runner: Arc<Runner>, args: &Args, upstream: String, admin: Client, scheduler: Client) -> Result<()> {
    let client = runner.client.clone();
    let gateway = runner.net.gateway;
    tokio::spawn({
        let listen = SocketAddr::from((gateway, args.api_port));
        async move {
            if let Err(e) = forward::serve(listen, upstream).await {
                tracing::error!(error = %format!("{e:#}"), "API forwarder stopped");
            }
        }
    });
    register_node(&client, &args.node_name, &gateway.to_string()).await?;
    volumes::ensure_storage_class(&admin, &args.storage_class).await?;
    tokio::spawn(heartbeat(client.clone(), args.node_name.clone(), gateway.to_string(), runner.shutdown.clone()));

    let wake = Arc::new(Notify::new());
    let pods = reflect(Api::<Pod>::all(scheduler.clone()), wake.clone());
    // The kubelet's own read of Services (the Node authorizer's static node
    // rules allow get/list/watch of services cluster-wide).
    let services = reflect(Api::<Service>::all(client.clone()), wake.clone());
    let pvcs = reflect(Api::<PersistentVolumeClaim>::all(admin.clone()), wake.clone());
    let pvs = reflect(Api::<PersistentVolume>::all(admin.clone()), wake.clone());
    let volumes_dir = runner.work_dir.join("volumes");
    let mut workers: HashMap<String, PodWorker> = HashMap::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let oci: BTreeMap<_, _> = runner.oci.iter().map(|(n, i)| (n, &i.digest)).collect();
    tracing::info!(node = %args.node_name, %gateway, images = ?runner.images, ?oci, "pod runner ready");
    loop {
        let all = pods.state();
        let mine: Vec<_> = all
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&args.node_name))
            .cloned()
            .collect();
        for p in &all {
            let spec = p.spec.clone().unwrap_or_default();
            let terminal = matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
            if spec.node_name.is_none()
                && p.metadata.deletion_timestamp.is_none()
                && !terminal
                && spec.scheduler_name.as_deref().unwrap_or("default-scheduler") == "default-scheduler"
            {
                bind(&scheduler, p, &args.node_name).await;
            }
        }
        if let Err(e) = volumes::provision(&admin, &args.storage_class, &volumes_dir, &pvcs.state(), &pvs.state()).await
        {
            tracing::warn!(error = %format!("{e:#}"), "provisioning");
        }
        runner.update_dns(dns::records(&all, &services.state()));
        // Pod workers: start new ones, feed updates, tell the gone.
        let mut seen = std::collections::HashSet::new();
        for p in &mine {
            let uid = p.uid().unwrap_or_default();
            seen.insert(uid.clone());
            if let Some((tx, _)) = workers.get(&uid) {
                tx.send_if_modified(|cur| {
                    let changed = cur.as_ref().map(|c| c.resource_version()) != Some(p.resource_version());
                    if changed {
                        *cur = Some(p.clone());
                    }
                    changed
                });
                continue;
            }
            let terminal = matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
            if terminal {
                continue;
            }
            let (tx, rx) = watch::channel(Some(p.clone()));
            let handle = tokio::spawn(pod::run(runner.clone(), rx));
            workers.insert(uid, (tx, handle));
        }
        for (uid, (tx, _)) in workers.iter() {
            if !seen.contains(uid) {
                tx.send_if_modified(|cur| {
                    let was = cur.is_some();
                    *cur = None;
                    was
                });
            }
        }
        workers.retain(|_, (_, h)| !h.is_finished());
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    tracing::info!("stopping: every pod's processes get SIGTERM (5 s), then SIGKILL");
    runner.shutdown.cancel();
    for (_, (_, h)) in workers {
        let _ = tokio::time::timeout(Duration::from_secs(20), h).await;
    }
    Ok(())
}
