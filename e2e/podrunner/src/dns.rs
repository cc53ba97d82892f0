//! Cluster DNS for pods, as /etc/hosts files (there is no DNS server here):
//! the names CoreDNS would serve from Services and their endpoints, plus what
//! the kubelet writes into a pod's own hosts file.
//!
//! For a pod P (hostname H, subdomain S, namespace N, address IP) and a
//! Service V of namespace N:
//!
//! - `H.S.N.svc.DOMAIN` resolves to IP if S names a headless Service
//!   (`clusterIP: None`) of N whose selector selects P, and P is one of its
//!   ready endpoints: Ready and not terminating, or in any state when the
//!   Service has `publishNotReadyAddresses` (the EndpointSlice controller's
//!   `ready`, the only endpoints CoreDNS serves). No Service, a misnamed one,
//!   a selector that misses P, or a not-ready P: the name does not resolve.
//! - `V.N.svc.DOMAIN` of a headless V resolves to every ready endpoint: one
//!   hosts line per address, in pod-name order; getaddrinfo returns them all,
//!   gethostbyname only the first. A Service with a cluster IP gets no name:
//!   nothing routes cluster IPs here (there is no kube-proxy), and a name
//!   that fails to resolve is clearer than an address that never answers.
//!   ExternalName Services get none either (a CNAME has no hosts-file form).
//! - `A-B-C-D.N.pod.DOMAIN` resolves to A.B.C.D for every pod with an address
//!   (CoreDNS `pods insecure`).
//!
//! Shorter forms stand in for the search path of a real pod's resolv.conf
//! (`N.svc.DOMAIN svc.DOMAIN DOMAIN`): `X.N.svc` and `X.N` resolve from every
//! namespace, bare `X` (`H.S`, `V`) only from namespace N.
//!
//! Like the kubelet, a pod's own file also maps its address to `H.S.N.svc.DOMAIN`
//! (when it has a subdomain) and to `H`, Service or not, and carries its
//! `spec.hostAliases`; these names win over the cluster's.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;

/// One hosts line the cluster DNS contributes: `ip` under names relative to
/// `ns`.svc.DOMAIN (`H.S`, `V`), and/or its pod-IP name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub ip: String,
    pub ns: String,
    /// Names relative to `<ns>.svc.<domain>`, e.g. `t-0.t` and `t`.
    pub svc_names: Vec<String>,
    /// Also `A-B-C-D.<ns>.pod.<domain>`.
    pub pod_ip_name: bool,
}

/// What the kubelet writes about the pod itself into its hosts file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub ns: String,
    pub ip: String,
    /// spec.hostname, else the pod name (at most 63 characters).
    pub hostname: String,
    /// `H.S.N.svc.DOMAIN` when the pod has a subdomain.
    pub fqdn: Option<String>,
    /// spec.hostAliases: (address, names).
    pub aliases: Vec<(String, Vec<String>)>,
}

impl PodIdentity {
    pub fn of(pod: &Pod, ip: &str, domain: &str) -> PodIdentity {
        let ns = pod.namespace().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut hostname = spec.hostname.filter(|h| !h.is_empty()).unwrap_or_else(|| pod.name_any());
        // The kubelet's truncation of long pod names.
        hostname.truncate(63);
        let hostname = hostname.trim_end_matches(['-', '.']).to_string();
        let fqdn = spec.subdomain.filter(|s| !s.is_empty()).map(|s| format!("{hostname}.{s}.{ns}.svc.{domain}"));
        let aliases = spec
            .host_aliases
            .into_iter()
            .flatten()
            .map(|a| (a.ip, a.hostnames.unwrap_or_default()))
            .filter(|(_, names)| !names.is_empty())
            .collect();
        PodIdentity { ns, ip: ip.to_string(), hostname, fqdn, aliases }
    }
}

fn phase(p: &Pod) -> Option<&str> {
    p.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// The pod's address, if it has one worth a name: not finished, and not a
/// deleted pod that is no longer running.
fn address(p: &Pod) -> Option<String> {
    let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).filter(|ip| !ip.is_empty())?;
    let terminal = matches!(phase(p), Some("Succeeded" | "Failed"));
    let gone = p.metadata.deletion_timestamp.is_some() && phase(p) != Some("Running");
    (!terminal && !gone).then_some(ip)
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pods a headless Service serves as ready endpoints, by name.
fn endpoints<'a>(svc: &Service, pods: &'a [Arc<Pod>]) -> Vec<(&'a Pod, String)> {
    let spec = svc.spec.clone().unwrap_or_default();
    // A Service without a selector has no managed endpoints.
    let Some(selector) = spec.selector.filter(|s| !s.is_empty()) else { return vec![] };
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let ns = svc.namespace();
    let mut out: Vec<(&Pod, String)> = pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.namespace() == ns)
        .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
        .filter(|p| publish_not_ready || (is_ready(p) && p.metadata.deletion_timestamp.is_none()))
        .filter_map(|p| address(p).map(|ip| (p, ip)))
        .collect();
    out.sort_by_key(|(p, _)| p.name_any());
    out
}

/// The cluster DNS as hosts lines, from the pods and Services of the API.
pub fn records(pods: &[Arc<Pod>], services: &[Arc<Service>]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut by_pod: BTreeMap<(String, String), String> = BTreeMap::new();
    for p in pods {
        if let Some(ip) = address(p) {
            by_pod.insert((p.namespace().unwrap_or_default(), p.name_any()), ip);
        }
    }
    for ((ns, _), ip) in &by_pod {
        out.push(Record { ip: ip.clone(), ns: ns.clone(), svc_names: vec![], pod_ip_name: true });
    }
    let mut services: Vec<&Service> = services.iter().map(|s| s.as_ref()).collect();
    services.sort_by_key(|s| (s.namespace(), s.name_any()));
    for svc in services {
        let spec = svc.spec.as_ref();
        let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        let external = spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName");
        if !headless || external || svc.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = svc.name_any();
        for (p, ip) in endpoints(svc, pods) {
            let pspec = p.spec.as_ref();
            let mut svc_names = vec![];
            // The EndpointSlice controller sets an endpoint's hostname only
            // when the pod's subdomain is this Service.
            if let Some(h) = pspec.and_then(|s| s.hostname.as_deref()).filter(|h| !h.is_empty())
                && pspec.and_then(|s| s.subdomain.as_deref()) == Some(name.as_str())
            {
                svc_names.push(format!("{h}.{name}"));
            }
            svc_names.push(name.clone());
            out.push(Record { ip, ns: p.namespace().unwrap_or_default(), svc_names, pod_ip_name: false });
        }
    }
    out
}

/// The hosts file of the pod `me`, with the cluster DNS `records`.
pub fn hosts_file(records: &[Record], me: &PodIdentity, domain: &str) -> String {
    let mut s = String::from(
        "# managed by the shardkv e2e pod runner: the kubelet's entries, then the cluster DNS\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    // Names of the pod's own entries: the cluster's lines do not repeat them.
    let mut own: HashSet<String> = HashSet::new();
    match &me.fqdn {
        Some(fqdn) => s.push_str(&format!("{}\t{fqdn}\t{}\n", me.ip, me.hostname)),
        None => s.push_str(&format!("{}\t{}\n", me.ip, me.hostname)),
    }
    own.extend(me.fqdn.iter().cloned());
    own.insert(me.hostname.clone());
    if !me.aliases.is_empty() {
        s.push_str("# Entries added by HostAliases.\n");
        for (ip, names) in &me.aliases {
            s.push_str(&format!("{ip}\t{}\n", names.join("\t")));
            own.extend(names.iter().cloned());
        }
    }
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for r in records {
        let mut names = Vec::new();
        for rel in &r.svc_names {
            let ns = &r.ns;
            names.push(format!("{rel}.{ns}.svc.{domain}"));
            names.push(format!("{rel}.{ns}.svc"));
            names.push(format!("{rel}.{ns}"));
            if *ns == me.ns {
                names.push(rel.clone());
            }
        }
        if r.pod_ip_name {
            names.push(format!("{}.{}.pod.{domain}", r.ip.replace(['.', ':'], "-"), r.ns));
        }
        names.retain(|n| !own.contains(n) && seen.insert((r.ip.clone(), n.clone())));
        if !names.is_empty() {
            s.push_str(&format!("{}\t{}\n", r.ip, names.join(" ")));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A pod of StatefulSet-like name `name` (hostname = name when `sub` is
    /// set), labels app=`app`, an address when `ip` is set, Ready when `ready`.
    fn pod(ns: &str, name: &str, app: &str, sub: Option<&str>, ip: Option<&str>, ready: bool) -> Arc<Pod> {
        let mut spec = json!({"containers": []});
        if let Some(sub) = sub {
            spec["hostname"] = json!(name);
            spec["subdomain"] = json!(sub);
        }
        let mut p = json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": app}}, "spec": spec});
        if let Some(ip) = ip {
            p["status"] = json!({"podIP": ip, "phase": "Running",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
        }
        Arc::new(serde_json::from_value(p).unwrap())
    }

    fn service(ns: &str, name: &str, app: &str, headless: bool, publish_not_ready: bool) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"clusterIP": if headless { "None" } else { "10.96.0.10" }, "selector": {"app": app},
                         "publishNotReadyAddresses": publish_not_ready, "ports": [{"port": 80}]},
            }))
            .unwrap(),
        )
    }

    /// The hosts file of pod `viewer` (which must have an address).
    fn hosts_of(viewer: &Pod, pods: &[Arc<Pod>], services: &[Arc<Service>]) -> String {
        let ip = viewer.status.as_ref().unwrap().pod_ip.clone().unwrap();
        hosts_file(&records(pods, services), &PodIdentity::of(viewer, &ip, "cluster.local"), "cluster.local")
    }

    /// The addresses `name` resolves to in `hosts`, in order (as getaddrinfo
    /// reads every matching line).
    fn resolve(hosts: &str, name: &str) -> Vec<String> {
        hosts
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let ip = f.next()?;
                f.any(|n| n == name).then(|| ip.to_string())
            })
            .collect()
    }

    #[test]
    fn statefulset_pods_resolve_through_their_headless_service() {
        let pods = vec![
            pod("db", "demo-g1-0", "g1", Some("demo-g1"), Some("10.213.0.2"), true),
            pod("db", "demo-g1-1", "g1", Some("demo-g1"), Some("10.213.0.3"), true),
            pod("db", "pending", "g1", Some("demo-g1"), None, false),
            pod("other", "client", "c", None, Some("10.213.0.9"), true),
        ];
        let services = vec![service("db", "demo-g1", "g1", true, false)];
        let hosts = hosts_of(&pods[3], &pods, &services);
        assert!(hosts.contains("127.0.0.1\tlocalhost\n"));
        assert!(hosts.contains(
            "10.213.0.2\tdemo-g1-0.demo-g1.db.svc.cluster.local demo-g1-0.demo-g1.db.svc demo-g1-0.demo-g1.db \
             demo-g1.db.svc.cluster.local demo-g1.db.svc demo-g1.db\n"
        ));
        assert_eq!(resolve(&hosts, "demo-g1-1.demo-g1.db.svc.cluster.local"), ["10.213.0.3"]);
        // The headless Service's name: every ready endpoint, in pod-name order.
        assert_eq!(resolve(&hosts, "demo-g1.db.svc.cluster.local"), ["10.213.0.2", "10.213.0.3"]);
        assert_eq!(resolve(&hosts, "demo-g1.db"), ["10.213.0.2", "10.213.0.3"]);
        // Bare `H.S` and `V` only from the pod's own namespace.
        assert!(resolve(&hosts, "demo-g1-0.demo-g1").is_empty());
        assert!(resolve(&hosts, "demo-g1").is_empty());
        let from_db = hosts_of(&pods[0], &pods, &services);
        assert_eq!(resolve(&from_db, "demo-g1-1.demo-g1"), ["10.213.0.3"]);
        assert_eq!(resolve(&from_db, "demo-g1"), ["10.213.0.2", "10.213.0.3"]);
        // Pod-IP names for every pod with an address.
        assert_eq!(resolve(&hosts, "10-213-0-2.db.pod.cluster.local"), ["10.213.0.2"]);
        assert_eq!(resolve(&hosts, "10-213-0-9.other.pod.cluster.local"), ["10.213.0.9"]);
        assert!(!hosts.contains("pending"));
    }

    #[test]
    fn a_pod_without_its_service_does_not_resolve() {
        let pods = vec![
            pod("db", "a-0", "a", Some("a"), Some("10.213.0.2"), true),
            pod("db", "b-0", "b", Some("b"), Some("10.213.0.3"), true),
        ];
        // No Service at all.
        let hosts = hosts_of(&pods[1], &pods, &[]);
        assert!(resolve(&hosts, "a-0.a.db.svc.cluster.local").is_empty());
        assert!(resolve(&hosts, "a.db.svc.cluster.local").is_empty());
        // A Service of another name than the subdomain: its name resolves,
        // the pod's `H.S` name does not (the endpoint has no hostname).
        let misnamed = vec![service("db", "a-svc", "a", true, false)];
        let hosts = hosts_of(&pods[1], &pods, &misnamed);
        assert!(resolve(&hosts, "a-0.a.db.svc.cluster.local").is_empty());
        assert!(resolve(&hosts, "a-0.a-svc.db.svc.cluster.local").is_empty());
        assert_eq!(resolve(&hosts, "a-svc.db.svc.cluster.local"), ["10.213.0.2"]);
        // The right name in another namespace.
        let elsewhere = vec![service("other", "a", "a", true, false)];
        assert!(resolve(&hosts_of(&pods[1], &pods, &elsewhere), "a-0.a.db.svc.cluster.local").is_empty());
        // A Service with a cluster IP: no names (nothing routes the cluster IP).
        let cluster_ip = vec![service("db", "a", "a", false, false)];
        let hosts = hosts_of(&pods[1], &pods, &cluster_ip);
        assert!(resolve(&hosts, "a-0.a.db.svc.cluster.local").is_empty());
        assert!(resolve(&hosts, "a.db.svc.cluster.local").is_empty());
        // The pod-IP name needs no Service.
        assert_eq!(resolve(&hosts, "10-213-0-2.db.pod.cluster.local"), ["10.213.0.2"]);
    }

    #[test]
    fn a_selector_mismatch_does_not_resolve() {
        let pods = vec![
            pod("db", "a-0", "a", Some("a"), Some("10.213.0.2"), true),
            pod("db", "viewer", "v", None, Some("10.213.0.3"), true),
        ];
        let services = vec![service("db", "a", "not-a", true, true)];
        let hosts = hosts_of(&pods[1], &pods, &services);
        assert!(resolve(&hosts, "a-0.a.db.svc.cluster.local").is_empty());
        assert!(resolve(&hosts, "a.db.svc.cluster.local").is_empty());
        // A Service without a selector has no endpoints either.
        let mut no_selector = (*service("db", "a", "a", true, true)).clone();
        no_selector.spec.as_mut().unwrap().selector = None;
        let hosts = hosts_of(&pods[1], &pods, &[Arc::new(no_selector)]);
        assert!(resolve(&hosts, "a-0.a.db.svc.cluster.local").is_empty());
    }

    #[test]
    fn not_ready_pods_resolve_only_with_publish_not_ready_addresses() {
        let pods = vec![
            pod("db", "a-0", "a", Some("a"), Some("10.213.0.2"), false),
            pod("db", "a-1", "a", Some("a"), Some("10.213.0.3"), true),
            pod("db", "viewer", "v", None, Some("10.213.0.4"), true),
        ];
        let strict = vec![service("db", "a", "a", true, false)];
        let hosts = hosts_of(&pods[2], &pods, &strict);
        assert!(resolve(&hosts, "a-0.a.db.svc.cluster.local").is_empty());
        assert_eq!(resolve(&hosts, "a-1.a.db.svc.cluster.local"), ["10.213.0.3"]);
        assert_eq!(resolve(&hosts, "a.db.svc.cluster.local"), ["10.213.0.3"]);
        // Raft peers resolve each other before they are Ready (the operator's
        // headless Services publish not-ready addresses).
        let publish = vec![service("db", "a", "a", true, true)];
        let hosts = hosts_of(&pods[2], &pods, &publish);
        assert_eq!(resolve(&hosts, "a-0.a.db.svc.cluster.local"), ["10.213.0.2"]);
        assert_eq!(resolve(&hosts, "a.db.svc.cluster.local"), ["10.213.0.2", "10.213.0.3"]);

        // A terminating pod leaves the ready endpoints, unless not-ready ones are published.
        let mut terminating = (*pod("db", "a-1", "a", Some("a"), Some("10.213.0.3"), true)).clone();
        terminating.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let pods = vec![Arc::new(terminating), pods[2].clone()];
        assert!(resolve(&hosts_of(&pods[1], &pods, &strict), "a-1.a.db.svc.cluster.local").is_empty());
        assert_eq!(resolve(&hosts_of(&pods[1], &pods, &publish), "a-1.a.db.svc.cluster.local"), ["10.213.0.3"]);
    }

    #[test]
    fn the_pod_resolves_its_own_names_once_like_the_kubelet_writes_them() {
        let mut me = (*pod("db", "a-0", "a", Some("a"), Some("10.213.0.2"), false)).clone();
        me.spec.as_mut().unwrap().host_aliases =
            Some(vec![serde_json::from_value(json!({"ip": "10.1.2.3", "hostnames": ["foo.local", "bar"]})).unwrap()]);
        let pods = vec![Arc::new(me)];
        // No Service: the pod still knows its own name (the kubelet's entry).
        let hosts = hosts_of(&pods[0], &pods, &[]);
        assert!(hosts.contains("10.213.0.2\ta-0.a.db.svc.cluster.local\ta-0\n"));
        assert!(hosts.contains("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar\n"));
        assert_eq!(resolve(&hosts, "bar"), ["10.1.2.3"]);
        // With the Service, the cluster's lines do not repeat its own names.
        let services = vec![service("db", "a", "a", true, true)];
        let hosts = hosts_of(&pods[0], &pods, &services);
        assert_eq!(resolve(&hosts, "a-0.a.db.svc.cluster.local"), ["10.213.0.2"]);
        assert_eq!(resolve(&hosts, "a.db.svc.cluster.local"), ["10.213.0.2"]);
        // A pod without subdomain: its name only.
        let plain = pod("db", "plain", "p", None, Some("10.213.0.5"), true);
        let hosts = hosts_of(&plain, std::slice::from_ref(&plain), &[]);
        assert!(hosts.contains("10.213.0.5\tplain\n"));
    }
}
