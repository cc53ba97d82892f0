//! Minimal HTTP/1.1 GET over a plain TCP connection, for the nodes' admin endpoints
//! (/healthz, /readyz, /metrics, /lifecycle/prestop).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// GETs `path` from `addr` ("host:port") with `Connection: close`, within `timeout`.
pub async fn get(addr: &str, path: &str, timeout: Duration) -> io::Result<HttpResponse> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("connecting to {addr}: {e}")))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| {
        io::Error::new(io::ErrorKind::TimedOut, format!("GET http://{addr}{path} took over {timeout:?}"))
    })?
}

fn malformed(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parses a complete response read up to connection close.
pub fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Err(malformed(format!("incomplete HTTP response ({} bytes)", raw.len())));
    };
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| malformed("HTTP head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| malformed(format!("bad HTTP status line {status_line:?}")))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding") && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &raw[head_end + 4..];
    let body = if chunked { decode_chunked(body)? } else { body.to_vec() };
    Ok(HttpResponse { status, body })
}

fn decode_chunked(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Err(malformed("truncated chunked body"));
        };
        let size_field = std::str::from_utf8(&data[..line_end]).map_err(|_| malformed("chunk size is not UTF-8"))?;
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_hex, 16).map_err(|_| malformed(format!("bad chunk size {size_hex:?}")))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            return Err(malformed("truncated chunk"));
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_content_length_response() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"{\"ok\":true}");
    }

    #[test]
    fn decodes_a_chunked_body() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5;x=y\r\nready\r\n0\r\n\r\n";
        let response = parse_response(raw).unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.body, b"not ready");
    }

    #[test]
    fn rejects_truncated_responses() {
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-le").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA\r\nabc").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
    }
}
