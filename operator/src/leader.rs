//! Leader election through a coordination.k8s.io Lease, so that of several operator replicas
//! exactly one acts at a time.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

/// Who competes for which Lease.
#[derive(Debug, Clone)]
pub struct Election {
    pub lease_name: String,
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub lease_duration: Duration,
    /// How long before expiry the holder renews.
    pub renew_margin: Duration,
}

/// Holding the lease: `lost()` completes when it is no longer held. Dropping it releases it.
pub struct Leadership {
    state: watch::Receiver<bool>,
}

impl Leadership {
    /// Waits until this replica holds the lease.
    pub async fn acquire(client: Client, election: &Election) -> anyhow::Result<Leadership> {
        let manager = LeaseManagerBuilder::new(client, &election.lease_name)
            .with_namespace(&election.namespace)
            .with_identity(&election.identity)
            .with_duration(election.lease_duration.as_secs())
            .with_grace(election.renew_margin.as_secs())
            .build()
            .await?;
        let (mut state, _task) = manager.watch().await;
        state.wait_for(|leading| *leading).await?;
        Ok(Leadership { state })
    }

    /// Completes when the lease is lost (or its manager stopped).
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leading| !*leading).await;
    }
}
