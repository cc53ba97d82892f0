//! A TLS configuration rebuilt from its files whenever they change, checked at each new
//! connection, so certificates rotate without a restart.

use std::sync::{Arc, Mutex, PoisonError};

use crate::error::TlsError;
use crate::files::{Material, Stamp, TlsFiles};

pub(crate) struct Reloading<T> {
    files: TlsFiles,
    build: fn(Material) -> Result<T, TlsError>,
    /// The files' stamp last looked at, and the newest configuration that built.
    state: Mutex<(Stamp, Arc<T>)>,
}

impl<T> Reloading<T> {
    /// Builds the first configuration; failing here is fatal, unlike a failed reload.
    pub fn new(files: TlsFiles, build: fn(Material) -> Result<T, TlsError>) -> Result<Self, TlsError> {
        let stamp = files.stamp();
        let first = build(files.load()?)?;
        Ok(Reloading { files, build, state: Mutex::new((stamp, Arc::new(first))) })
    }

    /// The configuration for a new connection: rebuilt first if a file changed since the last
    /// look. A rebuild that fails (a half-written rotation, say) keeps the previous one and is
    /// logged once per change.
    pub fn current(&self) -> Arc<T> {
        let stamp = self.files.stamp();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 != stamp {
            state.0 = stamp;
            match self.files.load().and_then(self.build) {
                Ok(config) => {
                    state.1 = Arc::new(config);
                    tracing::info!(cert = %self.files.cert.display(), "reloaded the TLS certificate, key and CA");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the TLS files changed but do not load; keeping the previous ones")
                }
            }
        }
        state.1.clone()
    }
}
