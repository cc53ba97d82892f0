//! Probes and lifecycle handlers: httpGet, tcpSocket and exec, as the kubelet
//! runs them (HTTP 200-399 is success).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Container, ExecAction, HTTPGetAction, Probe, TCPSocketAction};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

/// Resolves a port given by number or by container port name.
pub fn port(container: &Container, port: &IntOrString) -> Result<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).context("port out of range"),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port as u16)
            .with_context(|| format!("container {} has no port named {name}", container.name)),
    }
}

pub async fn http_get(
    container: &Container,
    pod_ip: Ipv4Addr,
    action: &HTTPGetAction,
    timeout: Duration,
) -> Result<()> {
    if action.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
        bail!("httpGet scheme {:?} is not supported by the pod runner", action.scheme);
    }
    let host = action.host.clone().unwrap_or_else(|| pod_ip.to_string());
    let port = port(container, &action.port)?;
    let path = action.path.clone().unwrap_or_else(|| "/".to_string());
    let request = async {
        let mut stream = TcpStream::connect((host.as_str(), port)).await?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.36\r\nConnection: close\r\n"
        );
        for h in action.http_headers.iter().flatten() {
            req.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.windows(2).any(|w| w == b"\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        anyhow::Ok(head)
    };
    let head = tokio::time::timeout(timeout, request)
        .await
        .with_context(|| format!("GET http://{host}:{port}{path}: no answer within {timeout:?}"))?
        .with_context(|| format!("GET http://{host}:{port}{path}"))?;
    let line = String::from_utf8_lossy(&head);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("GET http://{host}:{port}{path}: not an HTTP answer"))?;
    if !(200..400).contains(&code) {
        bail!("GET http://{host}:{port}{path}: HTTP {code}");
    }
    Ok(())
}

pub async fn tcp(container: &Container, pod_ip: Ipv4Addr, action: &TCPSocketAction, timeout: Duration) -> Result<()> {
    let host = action.host.clone().unwrap_or_else(|| pod_ip.to_string());
    let port = port(container, &action.port)?;
    tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .with_context(|| format!("connect {host}:{port}: timed out"))?
        .with_context(|| format!("connect {host}:{port}"))?;
    Ok(())
}

/// Runs the command inside the container's mount and network namespaces;
/// for an OCI container (`in_root`: its uid and gid) also in its root and
/// working directory, as its user.
pub async fn exec(pid: u32, in_root: Option<(u32, u32)>, action: &ExecAction, timeout: Duration) -> Result<()> {
    let cmd = action.command.clone().unwrap_or_default();
    if cmd.is_empty() {
        bail!("exec action without a command");
    }
    let pid = pid.to_string();
    let mut c = Command::new("nsenter");
    c.args(["-t", &pid, "-m", "-n"]);
    if let Some((uid, gid)) = in_root {
        c.args(["-r", "-w", "-S", &uid.to_string(), "-G", &gid.to_string()]);
    }
    c.arg("--").args(&cmd).kill_on_drop(true);
    let out = tokio::time::timeout(timeout, c.output())
        .await
        .with_context(|| format!("exec {cmd:?}: timed out after {timeout:?}"))??;
    if !out.status.success() {
        bail!("exec {cmd:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs one probe attempt.
pub async fn run(
    container: &Container,
    pod_ip: Ipv4Addr,
    pid: u32,
    in_root: Option<(u32, u32)>,
    probe: &Probe,
) -> Result<()> {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    if let Some(h) = &probe.http_get {
        http_get(container, pod_ip, h, timeout).await
    } else if let Some(t) = &probe.tcp_socket {
        tcp(container, pod_ip, t, timeout).await
    } else if let Some(e) = &probe.exec {
        exec(pid, in_root, e, timeout).await
    } else {
        bail!("probe type not supported by the pod runner (httpGet, tcpSocket and exec are)")
    }
}
