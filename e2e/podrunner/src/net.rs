//! The pod network: one Linux bridge on the host holding the gateway address,
//! and per pod a network namespace joined to it by a veth pair. Pod addresses
//! are real (not loopback), so EndpointSlices accept them; every address lives
//! in namespaces this process made, on this machine.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// Runs `ip ARGS...`, failing with its stderr.
pub async fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().await.context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

pub struct PodNetwork {
    pub bridge: String,
    /// Names of pod network namespaces start with it; host-side veths with
    /// `v` and it without dashes. The runner owns every namespace so named.
    netns_prefix: String,
    /// First two octets of the /16.
    prefix: [u8; 2],
    pub gateway: Ipv4Addr,
    /// Addresses in use, and where the next search starts: addresses are
    /// handed out round-robin, so a deleted pod's address (and the host's
    /// stale ARP entry for it) is not reused at once.
    used: Mutex<(BTreeSet<u16>, u16)>,
}

/// A pod's network: its namespace, host-side veth and address.
#[derive(Clone, Debug)]
pub struct PodNet {
    pub netns: String,
    pub veth: String,
    pub ip: Ipv4Addr,
    index: u16,
}

impl PodNetwork {
    /// `cidr` must be `A.B.0.0/16`; the bridge gets `A.B.0.1`.
    pub async fn create(bridge: &str, cidr: &str, netns_prefix: &str) -> Result<PodNetwork> {
        check_netns_prefix(netns_prefix)?;
        let (addr, len) = cidr.split_once('/').context("pod CIDR must look like A.B.0.0/16")?;
        let addr: Ipv4Addr = addr.parse().context("pod CIDR address")?;
        if len != "16" || addr.octets()[2] != 0 || addr.octets()[3] != 0 {
            bail!("pod CIDR must be a /16 of the form A.B.0.0/16, got {cidr}");
        }
        let [a, b, _, _] = addr.octets();
        let gateway = Ipv4Addr::new(a, b, 0, 1);
        // What a killed runner left (its bridge, its pods' namespaces with
        // their veths and addresses) would clash with new pods: start clean.
        if ip(&["link", "show", bridge]).await.is_ok() {
            tracing::warn!(bridge, "removing the pod bridge and pod namespaces a previous runner left");
            ip(&["link", "del", bridge]).await?;
        }
        let out = Command::new("ip").args(["netns", "list"]).output().await.context("ip netns list")?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split_whitespace().next().filter(|n| n.starts_with(netns_prefix)) {
                let _ = ip(&["netns", "del", name]).await;
                let _ = std::fs::remove_dir_all(netns_etc(name));
            }
        }
        ip(&["link", "add", bridge, "type", "bridge"]).await?;
        ip(&["addr", "add", &format!("{gateway}/16"), "dev", bridge]).await?;
        ip(&["link", "set", bridge, "up"]).await?;
        Ok(PodNetwork {
            bridge: bridge.to_string(),
            netns_prefix: netns_prefix.to_string(),
            prefix: [a, b],
            gateway,
            used: Mutex::new((BTreeSet::new(), 0)),
        })
    }

    fn allocate(&self) -> Result<u16> {
        const SIZE: u16 = 250 * 250;
        let mut guard = self.used.lock().unwrap();
        let (used, next) = &mut *guard;
        let index = (0..SIZE)
            .map(|i| (*next + i) % SIZE)
            .find(|i| !used.contains(i))
            .context("pod network addresses exhausted")?;
        used.insert(index);
        *next = (index + 1) % SIZE;
        Ok(index)
    }

    fn address(&self, index: u16) -> Ipv4Addr {
        // .0.1 is the gateway; pods get .X.2 to .X.251.
        Ipv4Addr::new(self.prefix[0], self.prefix[1], (index / 250) as u8, (index % 250) as u8 + 2)
    }

    /// Creates the pod's namespace, veth pair and address, with a default
    /// route through the gateway.
    pub async fn add_pod(&self, tag: &str) -> Result<PodNet> {
        let index = self.allocate()?;
        let net = PodNet {
            netns: format!("{}{tag}", self.netns_prefix),
            veth: format!("v{}{index}", self.netns_prefix.replace('-', "")),
            ip: self.address(index),
            index,
        };
        if let Err(e) = self.setup(&net).await {
            self.remove_pod(&net).await;
            return Err(e);
        }
        Ok(net)
    }

    async fn setup(&self, net: &PodNet) -> Result<()> {
        let _ = ip(&["netns", "del", &net.netns]).await; // a leftover of a killed runner
        ip(&["netns", "add", &net.netns]).await?;
        ip(&["link", "add", &net.veth, "type", "veth", "peer", "name", "eth0", "netns", &net.netns]).await?;
        ip(&["link", "set", &net.veth, "master", &self.bridge]).await?;
        ip(&["link", "set", &net.veth, "up"]).await?;
        let addr = format!("{}/16", net.ip);
        let gw = self.gateway.to_string();
        for args in [
            vec!["addr", "add", addr.as_str(), "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["link", "set", "lo", "up"],
            vec!["route", "add", "default", "via", gw.as_str()],
        ] {
            let mut full = vec!["-n", net.netns.as_str()];
            full.extend(args);
            ip(&full).await?;
        }
        Ok(())
    }

    /// Removes the pod's namespace (which takes its veth end along) and frees
    /// its address. Errors are logged: teardown goes on.
    pub async fn remove_pod(&self, net: &PodNet) {
        if let Err(e) = ip(&["netns", "del", &net.netns]).await {
            tracing::warn!(netns = %net.netns, error = %e, "removing pod network namespace");
        }
        let _ = ip(&["link", "del", &net.veth]).await;
        let _ = ip(&["neigh", "flush", "to", &net.ip.to_string(), "dev", &self.bridge]).await;
        let _ = std::fs::remove_dir_all(netns_etc(&net.netns));
        self.used.lock().unwrap().0.remove(&net.index);
    }

    pub async fn destroy(&self) {
        if let Err(e) = ip(&["link", "del", &self.bridge]).await {
            tracing::warn!(bridge = %self.bridge, error = %e, "removing the pod bridge");
        }
    }
}

/// A namespace prefix keeps runners apart: letters and digits, then `-`, so
/// that no prefix is the start of another's names; short enough that
/// `v` + prefix + a 5-digit index fits an interface name (15 bytes).
pub fn check_netns_prefix(p: &str) -> Result<()> {
    let body = p.strip_suffix('-').unwrap_or_default();
    if body.is_empty() || body.len() > 8 || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("netns prefix {p:?}: 1 to 8 letters or digits, then '-'");
    }
    Ok(())
}

/// `ip netns exec NS` bind-mounts the files of this directory over /etc.
pub fn netns_etc(netns: &str) -> PathBuf {
    PathBuf::from("/etc/netns").join(netns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> PodNetwork {
        PodNetwork {
            bridge: "test0".into(),
            netns_prefix: "skv-".into(),
            prefix: [10, 213],
            gateway: Ipv4Addr::new(10, 213, 0, 1),
            used: Mutex::new((BTreeSet::new(), 0)),
        }
    }

    #[test]
    fn addresses_skip_the_gateway_and_are_not_reused_at_once() {
        let n = network();
        let a = n.allocate().unwrap();
        let b = n.allocate().unwrap();
        assert_eq!(n.address(a), Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(n.address(b), Ipv4Addr::new(10, 213, 0, 3));
        n.used.lock().unwrap().0.remove(&a);
        // The freed address comes back only after the rest of the range.
        assert_eq!(n.address(n.allocate().unwrap()), Ipv4Addr::new(10, 213, 0, 4));
        assert_eq!(n.address(249), Ipv4Addr::new(10, 213, 0, 251));
        assert_eq!(n.address(250), Ipv4Addr::new(10, 213, 1, 2));
    }

    #[test]
    fn netns_prefixes_keep_runners_apart() {
        check_netns_prefix("skv-").unwrap();
        check_netns_prefix("skvimg1-").unwrap();
        for bad in ["skv", "-", "", "s_v-", "skvimage12-", "skv--"] {
            assert!(check_netns_prefix(bad).is_err(), "{bad}");
        }
    }
}
