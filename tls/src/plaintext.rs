//! A plaintext HTTP/2 client at a TLS port is sent a GOAWAY with INADEQUATE_SECURITY, which its
//! HTTP/2 stack reports as such (the shardkv client says "server requires TLS"), rather than
//! a bare connection reset.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long to read what the client still sends, so closing does not reset the connection
/// before it has read the GOAWAY.
const LINGER: Duration = Duration::from_secs(1);
const INADEQUATE_SECURITY: u32 = 0xc;
const DEBUG_DATA: &[u8] = b"this node requires TLS";

/// An empty SETTINGS frame (the server preface) then GOAWAY(last stream 0, INADEQUATE_SECURITY).
fn frames() -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = (8 + DEBUG_DATA.len()) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[0x7, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&INADEQUATE_SECURITY.to_be_bytes());
    out.extend_from_slice(DEBUG_DATA);
    out
}

pub(crate) async fn refuse(mut tcp: TcpStream) {
    if tcp.write_all(&frames()).await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(read) = tcp.read(&mut sink).await {
            if read == 0 {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_are_a_settings_then_a_goaway() {
        let frames = super::frames();
        assert_eq!(&frames[..9], &[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        let goaway = &frames[9..];
        assert_eq!(usize::from(goaway[2]), goaway.len() - 9, "the length field covers the payload");
        assert_eq!(goaway[3], 0x7);
        assert_eq!(&goaway[13..17], &[0, 0, 0, 0xc]);
    }
}
