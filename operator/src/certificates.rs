//! The certificates the operator keeps for a cluster with TLS on: a CA (Secret `<cluster>-ca`,
//! ten years, never rotated by the operator) and, issued from it, the nodes' certificate
//! (`<cluster>-node-tls`, mounted by every node pod), the operator's (`<cluster>-operator-tls`)
//! and a data client's (`<cluster>-client-tls`, for users to mount). What to issue and when is
//! decided here by pure functions; the controller reads and writes the Secrets.
//!
//! A certificate is renewed in place (same Secret, new key and serial) once two thirds of its
//! lifetime have passed, when it no longer names every host the nodes are dialled by, when it
//! was not signed by the current CA, or when the ShardCluster's `shardkv.dev/renew-certificates`
//! annotation holds a value other than the one last honoured (`status.tls.renewalToken`).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::ResourceExt;
use shardkv_tls::PeerIdentity;
use shardkv_tls::Role;
use shardkv_tls::certs::Ca;
use shardkv_tls::certs::CertificateInfo;
use shardkv_tls::certs::Issued;
use shardkv_tls::certs::Validity;

use crate::crd::ShardCluster;
use crate::resources::CA_CERT_KEY;
use crate::resources::CA_KEY_KEY;
use crate::resources::ClusterNames;
use crate::resources::TLS_CERT_KEY;
use crate::resources::TLS_KEY_KEY;

/// Set it to a new value to have every certificate (not the CA) reissued now.
pub const RENEW_ANNOTATION: &str = "shardkv.dev/renew-certificates";
/// On a certificate's Secret: the host names it was issued for, comma-separated.
pub const HOSTS_ANNOTATION: &str = "shardkv.dev/hosts";
/// Validity of a cluster's CA.
pub const CA_DAYS: u64 = 3650;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("Secret {secret} lacks the key {key}")]
    MissingKey { secret: String, key: &'static str },
    #[error("Secret {secret}: {key} is not UTF-8 PEM text")]
    NotText { secret: String, key: &'static str },
    #[error("Secret {secret} holds no usable CA: {source}")]
    BadCa { secret: String, source: shardkv_tls::TlsError },
    #[error("reading the certificate of {secret}: {source}")]
    Read { secret: String, source: shardkv_tls::TlsError },
    #[error("issuing {identity}: {source}")]
    Issue { identity: String, source: shardkv_tls::TlsError },
    #[error("the identity of {secret}: {source}")]
    Identity { secret: String, source: shardkv_tls::identity::IdentityError },
    #[error("the operator's certificate in {secret}: {source}")]
    OperatorTls { secret: String, source: shardkv_tls::TlsError },
}

/// A certificate the operator issues from the cluster's CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    pub secret: String,
    pub identity: PeerIdentity,
    /// DNS names it is valid for as a server (sorted); none for client-only identities.
    pub hosts: Vec<String>,
}

/// The certificates a cluster with these groups needs: the nodes' (every pod of every group
/// under its headless Service, and the client Service), the operator's and a data client's.
pub fn leaves(names: &ClusterNames, group_ids: &BTreeSet<u64>) -> Result<Vec<Leaf>, CertificateError> {
    let cluster = names.cluster_id();
    let identity = |secret: &str, role, name: &str| {
        PeerIdentity::new(&cluster, role, name)
            .map_err(|source| CertificateError::Identity { secret: secret.to_string(), source })
    };
    let node = names.node_tls_secret();
    let operator = names.operator_tls_secret();
    let client = names.client_tls_secret();
    Ok(vec![
        Leaf { identity: identity(&node, Role::Node, "node")?, hosts: node_hosts(names, group_ids), secret: node },
        Leaf {
            identity: identity(&operator, Role::Operator, "shardkv-operator")?,
            hosts: Vec::new(),
            secret: operator,
        },
        Leaf { identity: identity(&client, Role::Client, "client")?, hosts: Vec::new(), secret: client },
    ])
}

/// Names the nodes are dialled by: `<pod>.<group>.<namespace>.svc[.<domain>]` for every group's
/// pods (one wildcard per group), and the client Service in each of its forms.
pub fn node_hosts(names: &ClusterNames, group_ids: &BTreeSet<u64>) -> Vec<String> {
    let ns = &names.namespace;
    let domain = &names.cluster_domain;
    let service = names.client_service();
    let mut hosts: BTreeSet<String> = group_ids
        .iter()
        .flat_map(|g| {
            let group = names.group(*g);
            [format!("*.{group}.{ns}.svc"), format!("*.{group}.{ns}.svc.{domain}")]
        })
        .collect();
    hosts.extend([
        service.clone(),
        format!("{service}.{ns}"),
        format!("{service}.{ns}.svc"),
        format!("{service}.{ns}.svc.{domain}"),
    ]);
    hosts.into_iter().collect()
}

/// What a certificate Secret holds now, as far as renewal cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub info: CertificateInfo,
    /// The CA certificate stored beside it.
    pub ca_pem: String,
    /// The hosts recorded when it was issued.
    pub hosts: Vec<String>,
}

/// Why a certificate is (re)issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No Secret, or one whose certificate does not read.
    Missing,
    /// Signed by another CA than the cluster's current one.
    OtherCa,
    /// Does not name exactly the hosts nodes are dialled by now (groups changed).
    Hosts,
    /// Less than a third of its lifetime left.
    Expiring,
    /// The renewal annotation holds a new value.
    Requested,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Missing => "it did not exist",
            Reason::OtherCa => "it was signed by another CA",
            Reason::Hosts => "the host names it must carry changed",
            Reason::Expiring => "less than a third of its lifetime was left",
            Reason::Requested => "the renew-certificates annotation asked for it",
        }
    }

    /// A new certificate, not a renewal of one that existed.
    pub fn is_first(self) -> bool {
        self == Reason::Missing
    }
}

/// When a certificate valid over `[not_before, not_after]` is due for renewal: with a third of
/// its lifetime left.
pub fn renew_after(info: &CertificateInfo) -> SystemTime {
    let lifetime = info.not_after.duration_since(info.not_before).unwrap_or_default();
    info.not_before + lifetime * 2 / 3
}

/// Whether (and why) a certificate must be issued now. `requested`: the renewal annotation
/// holds a value not yet honoured.
pub fn renewal(held: Option<&Held>, leaf: &Leaf, ca_pem: &str, now: SystemTime, requested: bool) -> Option<Reason> {
    let Some(held) = held else { return Some(Reason::Missing) };
    if held.ca_pem.trim() != ca_pem.trim() {
        Some(Reason::OtherCa)
    } else if held.hosts != leaf.hosts {
        Some(Reason::Hosts)
    } else if now >= renew_after(&held.info) {
        Some(Reason::Expiring)
    } else if requested {
        Some(Reason::Requested)
    } else {
        None
    }
}

/// The renewal annotation's value when it asks for something not yet honoured.
pub fn requested_token<'a>(cluster: &'a ShardCluster, honoured: Option<&str>) -> Option<&'a str> {
    let token = cluster.annotations().get(RENEW_ANNOTATION).map(String::as_str)?;
    (Some(token) != honoured).then_some(token)
}

fn text(secret: &Secret, key: &'static str) -> Result<String, CertificateError> {
    let name = secret.name_any();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| CertificateError::MissingKey { secret: name.clone(), key })?;
    String::from_utf8(bytes.0.clone()).map_err(|_| CertificateError::NotText { secret: name, key })
}

/// The CA a Secret holds (`ca.crt`, `ca.key`), for cluster `cluster_id`.
pub fn ca_of(secret: &Secret, cluster_id: &str) -> Result<(Ca, CertificateInfo), CertificateError> {
    let bad = |source| CertificateError::BadCa { secret: secret.name_any(), source };
    let cert = text(secret, CA_CERT_KEY)?;
    let key = text(secret, CA_KEY_KEY)?;
    let info = CertificateInfo::of_pem(&cert).map_err(bad)?;
    let ca = Ca::from_pem(cluster_id, &cert, &key).map_err(bad)?;
    Ok((ca, info))
}

/// What a certificate Secret holds; None when it does not hold a readable certificate.
pub fn held(secret: &Secret) -> Option<Held> {
    let info = CertificateInfo::of_pem(&text(secret, TLS_CERT_KEY).ok()?).ok()?;
    text(secret, TLS_KEY_KEY).ok()?;
    let hosts = secret
        .annotations()
        .get(HOSTS_ANNOTATION)
        .map(|h| h.split(',').filter(|h| !h.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    Some(Held { info, ca_pem: text(secret, CA_CERT_KEY).ok()?, hosts })
}

/// A new CA for the cluster.
pub fn generate_ca(names: &ClusterNames) -> Result<Ca, CertificateError> {
    Ca::generate(&names.cluster_id(), Validity::days_from_now(CA_DAYS))
        .map_err(|source| CertificateError::Issue { identity: format!("the CA of {}", names.cluster_id()), source })
}

/// Issues `leaf`, valid for `days` but never beyond the CA.
pub fn issue(ca: &Ca, ca_info: &CertificateInfo, leaf: &Leaf, days: u32) -> Result<Issued, CertificateError> {
    let mut validity = Validity::days_from_now(u64::from(days));
    validity.not_after = validity.not_after.min(ca_info.not_after);
    ca.issue(&leaf.identity, &leaf.hosts, validity)
        .map_err(|source| CertificateError::Issue { identity: leaf.identity.to_string(), source })
}

fn secret(
    cluster: &ShardCluster,
    names: &ClusterNames,
    name: &str,
    type_: &str,
    annotations: Option<BTreeMap<String, String>>,
    data: &[(&str, &str)],
) -> Secret {
    let data = data.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(names.namespace.clone()),
            labels: Some(names.cluster_labels()),
            annotations,
            owner_references: cluster.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        type_: Some(type_.to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The CA's Secret (type Opaque): `ca.crt` and `ca.key`.
pub fn ca_secret(cluster: &ShardCluster, names: &ClusterNames, ca: &Ca) -> Secret {
    let pem = ca.pem();
    secret(
        cluster,
        names,
        &names.ca_secret(),
        "Opaque",
        None,
        &[(CA_CERT_KEY, &pem.cert_pem), (CA_KEY_KEY, &pem.key_pem)],
    )
}

/// A certificate's Secret (type kubernetes.io/tls): `ca.crt`, `tls.crt`, `tls.key`, and the
/// hosts it was issued for in an annotation.
pub fn leaf_secret(cluster: &ShardCluster, names: &ClusterNames, leaf: &Leaf, ca_pem: &str, issued: &Issued) -> Secret {
    let annotations = BTreeMap::from([(HOSTS_ANNOTATION.to_string(), leaf.hosts.join(","))]);
    secret(
        cluster,
        names,
        &leaf.secret,
        "kubernetes.io/tls",
        Some(annotations),
        &[(CA_CERT_KEY, ca_pem), (TLS_CERT_KEY, &issued.cert_pem), (TLS_KEY_KEY, &issued.key_pem)],
    )
}

/// The operator's client TLS for a cluster, from its certificate Secret's content.
pub fn operator_tls(
    secret_name: &str,
    ca_pem: &str,
    issued: &Issued,
) -> Result<shardkv_tls::ClientTls, CertificateError> {
    shardkv_tls::ClientTls::from_pem(ca_pem, &issued.cert_pem, &issued.key_pem)
        .map_err(|source| CertificateError::OperatorTls { secret: secret_name.to_string(), source })
}

/// What a certificate in `secret` says of itself.
pub fn info_of(secret: &str, cert_pem: &str) -> Result<CertificateInfo, CertificateError> {
    CertificateInfo::of_pem(cert_pem).map_err(|source| CertificateError::Read { secret: secret.to_string(), source })
}

/// The PEM pair a Secret holds, to rebuild what the operator uses of it.
pub fn issued_of(secret: &Secret) -> Result<Issued, CertificateError> {
    Ok(Issued { cert_pem: text(secret, TLS_CERT_KEY)?, key_pem: text(secret, TLS_KEY_KEY)? })
}

/// How long until the earliest of `times` (at least a second; None when there is none).
pub fn until_earliest(times: impl IntoIterator<Item = SystemTime>, now: SystemTime) -> Option<Duration> {
    times.into_iter().min().map(|t| t.duration_since(now).unwrap_or_default().max(Duration::from_secs(1)))
}

/// A day, for tests and callers that think in days.
pub fn days(n: u32) -> Duration {
    DAY * n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> ClusterNames {
        ClusterNames { name: "demo".into(), namespace: "prod".into(), cluster_domain: "cluster.local".into() }
    }

    fn info(not_before: SystemTime, lifetime_days: u32) -> CertificateInfo {
        CertificateInfo { serial: "01".into(), not_before, not_after: not_before + days(lifetime_days) }
    }

    #[test]
    fn node_hosts_cover_every_group_s_pods_and_the_client_service() {
        let hosts = node_hosts(&names(), &BTreeSet::from([0, 1, 3]));
        for expected in [
            "*.demo-meta.prod.svc",
            "*.demo-meta.prod.svc.cluster.local",
            "*.demo-g1.prod.svc.cluster.local",
            "*.demo-g3.prod.svc",
            "demo",
            "demo.prod",
            "demo.prod.svc",
            "demo.prod.svc.cluster.local",
        ] {
            assert!(hosts.contains(&expected.to_string()), "{expected} missing from {hosts:?}");
        }
        assert_eq!(hosts.len(), 10);
        let mut sorted = hosts.clone();
        sorted.sort();
        assert_eq!(hosts, sorted, "sorted, so a comparison with the recorded hosts is stable");
    }

    #[test]
    fn leaves_carry_the_cluster_id_and_their_roles() {
        let leaves = leaves(&names(), &BTreeSet::from([0, 1])).unwrap();
        let uris: Vec<String> = leaves.iter().map(|l| l.identity.uri()).collect();
        assert_eq!(
            uris,
            [
                "spiffe://shardkv/prod.demo/node/node",
                "spiffe://shardkv/prod.demo/operator/shardkv-operator",
                "spiffe://shardkv/prod.demo/client/client",
            ]
        );
        let secrets: Vec<&str> = leaves.iter().map(|l| l.secret.as_str()).collect();
        assert_eq!(secrets, ["demo-node-tls", "demo-operator-tls", "demo-client-tls"]);
        assert!(leaves[1].hosts.is_empty() && leaves[2].hosts.is_empty());
    }

    #[test]
    fn renewal_at_two_thirds_of_the_lifetime_on_request_or_when_something_changed() {
        let leaf = leaves(&names(), &BTreeSet::from([0])).unwrap().remove(0);
        let issued_at = SystemTime::UNIX_EPOCH + days(10_000);
        let held = Held { info: info(issued_at, 90), ca_pem: "CA".into(), hosts: leaf.hosts.clone() };
        let at = |d: u32| issued_at + days(d);
        assert_eq!(renewal(None, &leaf, "CA", at(0), false), Some(Reason::Missing));
        assert_eq!(renewal(Some(&held), &leaf, "CA", at(1), false), None);
        assert_eq!(renewal(Some(&held), &leaf, "CA", at(59), false), None, "more than a third left");
        assert_eq!(renewal(Some(&held), &leaf, "CA", at(60), false), Some(Reason::Expiring));
        assert_eq!(renewal(Some(&held), &leaf, "CA", at(200), false), Some(Reason::Expiring), "expired");
        assert_eq!(renewal(Some(&held), &leaf, "CA", at(1), true), Some(Reason::Requested));
        assert_eq!(renewal(Some(&held), &leaf, "OTHER", at(1), false), Some(Reason::OtherCa));
        let fewer = Held { hosts: vec!["x".into()], ..held.clone() };
        assert_eq!(renewal(Some(&fewer), &leaf, "CA", at(1), false), Some(Reason::Hosts));
        assert_eq!(renew_after(&held.info), at(60));
    }

    #[test]
    fn a_renewal_is_requested_by_a_new_annotation_value_only() {
        let mut cluster: ShardCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "shardkv.dev/v1alpha1", "kind": "ShardCluster",
            "metadata": {"name": "demo", "namespace": "prod"},
            "spec": {"image": "i", "groups": 1},
        }))
        .unwrap();
        assert_eq!(requested_token(&cluster, None), None);
        cluster.annotations_mut().insert(RENEW_ANNOTATION.into(), "1".into());
        assert_eq!(requested_token(&cluster, None), Some("1"));
        assert_eq!(requested_token(&cluster, Some("1")), None, "honoured already");
        assert_eq!(requested_token(&cluster, Some("0")), Some("1"));
    }

    #[test]
    fn issued_secrets_read_back_and_the_operator_can_use_its_own() {
        let names = names();
        let cluster: ShardCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "shardkv.dev/v1alpha1", "kind": "ShardCluster",
            "metadata": {"name": "demo", "namespace": "prod", "uid": "u1"},
            "spec": {"image": "i", "groups": 1},
        }))
        .unwrap();
        let ca = generate_ca(&names).unwrap();
        let stored = ca_secret(&cluster, &names, &ca);
        assert_eq!(stored.type_.as_deref(), Some("Opaque"));
        let keys: Vec<&String> = stored.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["ca.crt", "ca.key"]);
        let (ca, ca_info) = ca_of(&stored, &names.cluster_id()).unwrap();
        assert!(ca_info.not_after > SystemTime::now() + days(3000));
        let all = leaves(&names, &BTreeSet::from([0, 1])).unwrap();
        for leaf in &all {
            let issued = issue(&ca, &ca_info, leaf, 90).unwrap();
            let secret = leaf_secret(&cluster, &names, leaf, &ca.pem().cert_pem, &issued);
            assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
            assert_eq!(secret.metadata.owner_references.as_ref().unwrap()[0].uid, "u1");
            let held = held(&secret).unwrap();
            assert_eq!(held.hosts, leaf.hosts);
            assert_eq!(renewal(Some(&held), leaf, &ca.pem().cert_pem, SystemTime::now(), false), None);
            let lifetime = held.info.not_after.duration_since(SystemTime::now()).unwrap();
            assert!(lifetime > days(89) && lifetime <= days(90));
        }
        let operator = &all[1];
        let issued = issue(&ca, &ca_info, operator, 1).unwrap();
        assert!(operator_tls(&operator.secret, &ca.pem().cert_pem, &issued).is_ok());
        assert!(held(&Secret::default()).is_none());
    }

    #[test]
    fn the_next_renewal_is_the_earliest() {
        let now = SystemTime::UNIX_EPOCH + days(100);
        assert_eq!(until_earliest([now + days(3), now + days(1)], now), Some(days(1)));
        assert_eq!(until_earliest([now - days(1)], now), Some(Duration::from_secs(1)), "overdue: soon");
        assert_eq!(until_earliest([], now), None);
    }
}
