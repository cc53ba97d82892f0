//! A TCP proxy on loopback whose first connection to carry `silence_after` bytes towards the
//! caller then goes silent for good, both ways, with both sockets left open: what the ends see
//! when the network drops a connection without either of them closing it. Every other
//! connection, before and after, is forwarded.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::tcp::OwnedWriteHalf;

pub struct SilencingProxy {
    silenced: Arc<AtomicBool>,
}

impl SilencingProxy {
    pub async fn start(listen: &str, upstream: String, silence_after: u64) -> Self {
        let listener = TcpListener::bind(listen).await.expect("proxy listen");
        let silenced = Arc::new(AtomicBool::new(false));
        let one_shot = silenced.clone();
        tokio::spawn(async move {
            while let Ok((caller, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else { continue };
                let (caller_read, caller_write) = caller.into_split();
                let (server_read, server_write) = server.into_split();
                let cut = Arc::new(AtomicBool::new(false));
                tokio::spawn(forward(caller_read, server_write, None, cut.clone()));
                tokio::spawn(forward(server_read, caller_write, Some((silence_after, one_shot.clone())), cut));
            }
        });
        Self { silenced }
    }

    /// Whether a connection has gone silent.
    pub fn silenced(&self) -> bool {
        self.silenced.load(Ordering::SeqCst)
    }
}

/// Copies `from` to `to` until either end closes, or for good once `cut` is set. With a
/// `budget`, this direction sets `cut` after carrying that many bytes if no connection of the
/// proxy has been cut yet.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    budget: Option<(u64, Arc<AtomicBool>)>,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0; 64 << 10];
    let mut carried = 0u64;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        carried += n as u64;
        if let Some((limit, silenced)) = &budget
            && carried >= *limit
            && silenced.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok()
        {
            cut.store(true, Ordering::SeqCst);
        }
        if cut.load(Ordering::SeqCst) {
            // Hold both halves, forwarding nothing, until the test's runtime ends.
            let _held = (from, to);
            std::future::pending::<()>().await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
