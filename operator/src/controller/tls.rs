//! The cluster's CA and certificates: issued, renewed, reported.

use std::collections::BTreeSet;
use std::time::Duration;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::ResourceExt;
use kube::api::ListParams;
use kube::runtime::events::EventType;

use super::context::Context;
use super::error::Error;
use super::objects::apply_object;
use crate::certificates;
use crate::crd::CertificateStatus;
use crate::crd::ShardCluster;
use crate::crd::TlsStatus;
use crate::nodes::NodeApi;
use crate::resources::ClusterNames;

/// What the certificate step found or did: status, and when the next renewal is due.
pub(super) struct TlsOutcome {
    pub(super) status: TlsStatus,
    pub(super) next_renewal: Option<Duration>,
}

fn time(at: SystemTime) -> Time {
    Time(Timestamp::try_from(at).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Keeps the cluster's CA and certificates (see `certificates`): creates what is missing,
/// renews what is due, and tells the node client which identity to use for this cluster. A
/// paused cluster gets nothing written (status still reports what is there). With TLS off,
/// nothing: the nodes are called in plaintext.
pub(super) async fn ensure_tls(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    names: &ClusterNames,
    group_ids: &BTreeSet<u64>,
) -> Result<Option<TlsOutcome>, Error> {
    let cluster_id = names.cluster_id();
    if !cluster.spec.tls.enabled {
        ctx.nodes.use_tls(&cluster_id, None);
        return Ok(None);
    }
    let writable = !cluster.spec.paused;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let secrets = api.list(&ListParams::default().labels(&names.cluster_selector())).await?.items;
    let find = |name: &str| secrets.iter().find(|s| s.name_any() == name);
    // By name too: a CA Secret the user made beforehand (without the operator's labels) is used,
    // never overwritten.
    let ca_secret = match find(&names.ca_secret()) {
        Some(secret) => Some(secret.clone()),
        None => api.get_opt(&names.ca_secret()).await?,
    };
    let (ca, ca_info) = match ca_secret {
        Some(secret) => certificates::ca_of(&secret, &cluster_id)?,
        None if !writable => return Ok(None),
        None => {
            let ca = certificates::generate_ca(names)?;
            apply_object(ctx, &names.namespace, &certificates::ca_secret(cluster, names, &ca)).await?;
            let info = certificates::info_of(&names.ca_secret(), &ca.pem().cert_pem)?;
            let note = format!(
                "created the cluster's CA in Secret {} (serial {}, valid until {})",
                names.ca_secret(),
                info.serial,
                time(info.not_after).0
            );
            publish_certificate(ctx, cluster, &names.ca_secret(), "CertificateIssued", note).await;
            (ca, info)
        }
    };
    let ca_pem = ca.pem().cert_pem.clone();
    let honoured = cluster.status.as_ref().and_then(|s| s.tls.as_ref()).and_then(|t| t.renewal_token.clone());
    let requested = certificates::requested_token(cluster, honoured.as_deref());
    let now = SystemTime::now();
    let mut entries = Vec::new();
    let mut renew_times = Vec::new();
    let mut all_current = true;
    for leaf in certificates::leaves(names, group_ids)? {
        let existing = find(&leaf.secret);
        let held = existing.and_then(certificates::held);
        let reason = certificates::renewal(held.as_ref(), &leaf, &ca_pem, now, requested.is_some());
        let (info, issued) = match (reason, held) {
            (Some(reason), _) if writable => {
                let issued = certificates::issue(&ca, &ca_info, &leaf, cluster.spec.tls.certificate_days)?;
                let secret = certificates::leaf_secret(cluster, names, &leaf, &ca_pem, &issued);
                apply_object(ctx, &names.namespace, &secret).await?;
                let info = certificates::info_of(&leaf.secret, &issued.cert_pem)?;
                let (event, verb) =
                    if reason.is_first() { ("CertificateIssued", "issued") } else { ("CertificateRenewed", "renewed") };
                let note = format!(
                    "{verb} {} in Secret {}: serial {}, valid until {} ({})",
                    leaf.identity,
                    leaf.secret,
                    info.serial,
                    time(info.not_after).0,
                    reason.describe()
                );
                tracing::info!(cluster = %names.name, secret = %leaf.secret, serial = %info.serial, "{note}");
                publish_certificate(ctx, cluster, &leaf.secret, event, note).await;
                (info, Some(issued))
            }
            (reason, Some(held)) => {
                all_current &= reason.is_none();
                (held.info, None)
            }
            (_, None) => {
                all_current = false;
                continue;
            }
        };
        if leaf.secret == names.operator_tls_secret() {
            let issued = match (issued, existing) {
                (Some(issued), _) => issued,
                (None, Some(secret)) => certificates::issued_of(secret)?,
                (None, None) => unreachable!("a certificate that was neither issued nor held is skipped"),
            };
            ctx.nodes.use_tls(&cluster_id, Some(certificates::operator_tls(&leaf.secret, &ca_pem, &issued)?));
        }
        let renew_after = certificates::renew_after(&info);
        renew_times.push(renew_after);
        entries.push(CertificateStatus {
            secret: leaf.secret.clone(),
            identity: leaf.identity.uri(),
            serial: info.serial,
            not_after: time(info.not_after),
            renew_after: time(renew_after),
        });
    }
    let renewal_token = if all_current { requested.map(str::to_string).or(honoured) } else { honoured };
    let status = TlsStatus {
        ca_secret: names.ca_secret(),
        ca_not_after: Some(time(ca_info.not_after)),
        ca_serial: Some(ca_info.serial.clone()),
        renewal_token,
        certificates: entries,
    };
    Ok(Some(TlsOutcome { status, next_renewal: certificates::until_earliest(renew_times, now) }))
}

/// An Event about a certificate, related to its Secret (so each Secret's Events form their own
/// series).
async fn publish_certificate(
    ctx: &Context<impl NodeApi>,
    cluster: &ShardCluster,
    secret: &str,
    reason: &str,
    note: String,
) {
    let related = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        name: Some(secret.to_string()),
        namespace: cluster.namespace(),
        ..Default::default()
    };
    ctx.publish_related(cluster, Some(related), EventType::Normal, reason, "Certificates", note).await;
}
