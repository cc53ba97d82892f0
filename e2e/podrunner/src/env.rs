//! Container environment: literal values, the downward API (fieldRef),
//! configMap/secret keys, envFrom, and $(VAR) expansion as the kubelet does it.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Container, ObjectFieldSelector, Pod, Secret};
use kube::{Api, Client};

/// What a fieldRef can name, for a pod with address `pod_ip` on `host_ip`.
pub fn field_ref(pod: &Pod, sel: &ObjectFieldSelector, pod_ip: &str, host_ip: &str) -> Result<String> {
    let md = &pod.metadata;
    let spec = pod.spec.as_ref().context("pod without spec")?;
    let path = sel.field_path.as_str();
    let label_or_annotation = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => md.namespace.clone().unwrap_or_default(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.clone().unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.clone().unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.to_string(),
        "status.hostIP" | "status.hostIPs" => host_ip.to_string(),
        _ => {
            if let Some(v) = label_or_annotation("metadata.labels['", &md.labels) {
                v
            } else if let Some(v) = label_or_annotation("metadata.annotations['", &md.annotations) {
                v
            } else {
                bail!("fieldRef {path} is not supported by the pod runner")
            }
        }
    })
}

/// Expands $(VAR) from `vars`; $$(VAR) escapes to $(VAR); an unknown
/// reference stays as written (kubelet semantics).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(body) = tail.strip_prefix("$(")
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&tail[..end + 3]),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

async fn config_map(client: &Client, ns: &str, name: &str) -> Result<BTreeMap<String, String>> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("configMap {ns}/{name}"))?;
    Ok(cm.data.unwrap_or_default())
}

async fn secret(client: &Client, ns: &str, name: &str) -> Result<BTreeMap<String, String>> {
    let s =
        Api::<Secret>::namespaced(client.clone(), ns).get(name).await.with_context(|| format!("secret {ns}/{name}"))?;
    let mut m: BTreeMap<String, String> = s.string_data.unwrap_or_default();
    for (k, v) in s.data.unwrap_or_default() {
        m.insert(k, String::from_utf8_lossy(&v.0).into_owned());
    }
    Ok(m)
}

/// The environment of `container`, starting from `base` (service discovery
/// and the like), in declaration order.
pub async fn container_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
    base: BTreeMap<String, String>,
    pod_ip: &str,
    host_ip: &str,
) -> Result<BTreeMap<String, String>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars = base;
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, optional) = if let Some(r) = &from.config_map_ref {
            (config_map(client, &ns, &r.name).await, r.optional.unwrap_or(false))
        } else if let Some(r) = &from.secret_ref {
            (secret(client, &ns, &r.name).await, r.optional.unwrap_or(false))
        } else {
            continue;
        };
        match data {
            Ok(d) => vars.extend(d.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v))),
            Err(_) if optional => {}
            Err(e) => return Err(e),
        }
    }
    for e in container.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            expand(v, &vars)
        } else if let Some(src) = &e.value_from {
            if let Some(f) = &src.field_ref {
                field_ref(pod, f, pod_ip, host_ip)?
            } else if let Some((data, what, name, key, optional)) = match (&src.config_map_key_ref, &src.secret_key_ref)
            {
                (Some(k), _) => {
                    Some((config_map(client, &ns, &k.name).await, "configMap", &k.name, &k.key, k.optional))
                }
                (_, Some(k)) => Some((secret(client, &ns, &k.name).await, "secret", &k.name, &k.key, k.optional)),
                _ => None,
            } {
                match data.map(|m| m.get(key).cloned()) {
                    Ok(Some(v)) => v,
                    _ if optional.unwrap_or(false) => continue,
                    Ok(None) => bail!("{what} {ns}/{name} has no key {key}"),
                    Err(e) => return Err(e),
                }
            } else if src.resource_field_ref.is_some() {
                // No resource accounting here: report nothing rather than a lie.
                continue;
            } else {
                continue;
            }
        } else {
            String::new()
        };
        vars.insert(e.name.clone(), value);
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubelet_rules() {
        let vars = BTreeMap::from([("POD_NAME".to_string(), "n-0".to_string()), ("NS".to_string(), "x".to_string())]);
        assert_eq!(expand("--id=$(POD_NAME).$(NS)", &vars), "--id=n-0.x");
        assert_eq!(expand("$$(POD_NAME)", &vars), "$(POD_NAME)");
        assert_eq!(expand("$(MISSING) $5 $", &vars), "$(MISSING) $5 $");
        assert_eq!(expand("$(unterminated", &vars), "$(unterminated");
    }
}
