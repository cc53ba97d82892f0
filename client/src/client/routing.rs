//! Sending a request to the right replica: per-group leader tracking, deadline-bounded
//! retries with backoff, and re-routing with a fresh shard map after WrongGroup.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use tonic::transport::Channel;

use crate::error::Error;
use crate::error::Result;
use crate::retry::AttemptEffect;
use crate::retry::Backoff;
use crate::retry::Deadline;
use crate::retry::NextStep;
use crate::retry::attempt_effect;
use crate::retry::next_step;
use crate::retry::retry_delay;
use crate::shard_map::ShardMap;
use crate::shard_map::Unroutable;

use super::Client;
use super::Connection;
use super::Topology;
use super::lock;

/// Where the next request to one Raft group goes: the last known leader, or the member to
/// try next.
pub(super) struct Leader {
    state: Mutex<LeaderState>,
}

pub(super) struct LeaderState {
    endpoints: Vec<String>,
    target: String,
}

impl Leader {
    pub(super) fn new(endpoints: Vec<String>) -> Self {
        let target = endpoints.first().cloned().unwrap_or_default();
        Self { state: Mutex::new(LeaderState { endpoints, target }) }
    }

    pub(super) fn target(&self) -> String {
        lock(&self.state).target.clone()
    }

    pub(super) fn redirect(&self, leader: String) {
        lock(&self.state).target = leader;
    }

    /// Moves to the endpoint after `failed`, unless a concurrent request already moved on.
    pub(super) fn rotate_from(&self, failed: &str) {
        let mut state = lock(&self.state);
        if state.target != failed || state.endpoints.is_empty() {
            return;
        }
        // A leader address outside the member list restarts the rotation at its start.
        let next = state.endpoints.iter().position(|e| e == failed).map_or(0, |i| (i + 1) % state.endpoints.len());
        state.target = state.endpoints[next].clone();
    }

    /// Adopts a group's member list from a newer shard map. The current target stays unless
    /// it is no longer a member.
    pub(super) fn set_endpoints(&self, endpoints: &[String]) {
        let mut state = lock(&self.state);
        if state.endpoints == endpoints {
            return;
        }
        state.endpoints = endpoints.to_vec();
        if !state.endpoints.contains(&state.target)
            && let Some(first) = state.endpoints.first()
        {
            state.target = first.clone();
        }
    }
}

/// What the failed attempts of one request may have done (see [`attempt_effect`]).
#[derive(Default)]
pub(super) struct Attempts {
    /// Why an attempt may have been applied, once one may have been (the first reason).
    uncertain: Mutex<Option<String>>,
}

impl Attempts {
    pub(super) fn failed(&self, target: &str, status: &tonic::Status) {
        if attempt_effect(status) == AttemptEffect::Unknown {
            self.mark(format!("an attempt at {target} ended with {:?}: {}", status.code(), status.message()));
        }
    }

    pub(super) fn cut_off(&self, target: &str) {
        self.mark(format!("an attempt at {target} was still running when its time ran out"));
    }

    pub(super) fn mark(&self, reason: String) {
        lock(&self.uncertain).get_or_insert(reason);
    }

    /// The error a write returns: `OutcomeUnknown` once any attempt may have been applied.
    pub(super) fn settle(&self, error: Error) -> Error {
        match lock(&self.uncertain).take() {
            Some(reason) => Error::OutcomeUnknown(format!("{error}; {reason}")),
            None => error,
        }
    }
}

pub(super) fn give_up(last: tonic::Status, timeout: Duration) -> Error {
    match Error::from_status(last) {
        Error::Unavailable(msg) => {
            Error::Unavailable(format!("no leader answered within {timeout:?}; last answer: {msg}"))
        }
        Error::Transport(msg) => {
            Error::Transport(format!("no endpoint reachable within {timeout:?}; last error: {msg}"))
        }
        other => other,
    }
}

/// How long a call to a group may take in all, and how long one attempt at one node may take.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) total: Duration,
    pub(super) per_attempt: Duration,
}

impl Limits {
    /// No bound per attempt but the call's own: for admin calls that may legitimately wait
    /// (a membership change waits for a learner to catch up).
    pub(super) fn whole(total: Duration) -> Self {
        Self { total, per_attempt: total }
    }
}

/// How one attempt against a group ended, when it did not succeed.
pub(super) enum GroupError {
    /// The group does not serve the shard in its config: route again with a fresh map.
    WrongGroup(tonic::Status),
    Failed(Error),
}

impl From<Error> for GroupError {
    fn from(error: Error) -> Self {
        GroupError::Failed(error)
    }
}

/// Why a routed request is still being retried (turned into the error if time runs out).
pub(super) enum RouteFailure {
    Unroutable(Unroutable, u64),
    WrongGroup(tonic::Status),
}

/// Sleeps one backoff step, or fails with `error()` when `deadline` leaves no time for
/// another attempt after it.
pub(super) async fn pause(backoff: &mut Backoff, deadline: Deadline, error: impl FnOnce() -> Error) -> Result<()> {
    let delay = backoff.next_delay(rand::random::<f64>());
    match deadline.sleep_before_retry(Instant::now(), delay) {
        Some(pause) => {
            tokio::time::sleep(pause).await;
            Ok(())
        }
        None => Err(error()),
    }
}

/// A data group of a sharded cluster reached as if it were standalone refuses other groups'
/// shards; say what to do instead.
pub(super) fn standalone_wrong_group(status: tonic::Status) -> Error {
    Error::FailedPrecondition(format!(
        "{} (these endpoints are one data group of a sharded cluster: connect to the meta group's endpoints \
         so that requests are routed by shard)",
        status.message()
    ))
}

/// The error for a routed request that ran out of time while its shard had no reachable owner.
pub(super) fn unrouted(failure: RouteFailure, timeout: Duration) -> Error {
    match failure {
        RouteFailure::Unroutable(reason, num) => {
            Error::Unavailable(format!("no group served the request within {timeout:?}: shard map {num}: {reason}"))
        }
        RouteFailure::WrongGroup(status) => Error::Unavailable(format!(
            "no group served the request within {timeout:?}: the owner in the newest shard map still refuses it: {}",
            status.message()
        )),
    }
}

impl Client {
    /// Leader tracking of `group`, created with its members from `map` on first use.
    pub(super) fn group_leader(&self, map: &ShardMap, group: u64) -> Arc<Leader> {
        let mut groups = lock(&self.shared.groups);
        Arc::clone(groups.entry(group).or_insert_with(|| Arc::new(Leader::new(map.members(group).to_vec()))))
    }

    /// `call_routed` for a write: if it fails after an attempt that may have been applied, the
    /// error is `OutcomeUnknown`.
    pub(super) async fn write_routed<T, F, Fut>(&self, key: &[u8], attempt: F) -> Result<T>
    where
        F: FnMut(Connection, Duration, u64) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let attempts = Attempts::default();
        self.call_routed(key, self.request_timeout(), &attempts, attempt).await.map_err(|error| attempts.settle(error))
    }

    /// Runs `attempt` at the leader of the group serving `key`'s shard until it succeeds,
    /// fails for good, or `timeout` runs out. The attempt gets the remaining time as its gRPC
    /// deadline and the number of the shard map it was routed with. After a WrongGroup answer
    /// the map is refreshed and the attempt repeated at the (new) owner. Failed attempts are
    /// recorded in `attempts`.
    pub(super) async fn call_routed<T, F, Fut>(
        &self,
        key: &[u8],
        timeout: Duration,
        attempts: &Attempts,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Connection, Duration, u64) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let deadline = Deadline::after(timeout);
        let limits = Limits { total: timeout, ..self.kv_limits() };
        let topology = self.topology_by(deadline).await?;
        if topology == Topology::Standalone {
            return match self
                .call_group(&self.shared.seeds, 0, deadline, limits, attempts, |conn, t| attempt(conn, t, 0))
                .await
            {
                Ok(reply) => Ok(reply),
                Err(GroupError::Failed(error)) => Err(error),
                Err(GroupError::WrongGroup(status)) => Err(standalone_wrong_group(status)),
            };
        }
        let mut backoff = Backoff::default();
        // A newer map is used at once, but only once between two sleeps, so that groups
        // disagreeing with each other cannot make the client spin.
        let mut rerouted_since_sleep = false;
        let mut map = self.shard_map(deadline).await?;
        loop {
            let failure = match map.route(key) {
                Err(unroutable) => RouteFailure::Unroutable(unroutable, map.num()),
                Ok((_shard, group)) => {
                    let leader = self.group_leader(&map, group);
                    let num = map.num();
                    match self
                        .call_group(&leader, num, deadline, limits, attempts, |conn, t| attempt(conn, t, num))
                        .await
                    {
                        Ok(reply) => return Ok(reply),
                        Err(GroupError::Failed(error)) => return Err(error),
                        Err(GroupError::WrongGroup(status)) => RouteFailure::WrongGroup(status),
                    }
                }
            };
            let used = map.num();
            map = self.refresh_after(used, deadline).await?;
            if map.num() > used && !rerouted_since_sleep {
                rerouted_since_sleep = true;
                continue;
            }
            pause(&mut backoff, deadline, || unrouted(failure, timeout)).await?;
            rerouted_since_sleep = false;
            map = self.refresh_after(map.num(), deadline).await?;
        }
    }

    /// Runs `attempt` against the leader of the configured endpoints' group.
    pub(super) async fn call_seeds<T, F, Fut>(&self, timeout: Duration, mut attempt: F) -> Result<T>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        self.call_group(
            &self.shared.seeds,
            0,
            Deadline::after(timeout),
            Limits::whole(timeout),
            &Attempts::default(),
            |conn, t| attempt(conn.channel, t),
        )
        .await
        .map_err(|e| self.meta_error(e))
    }

    /// Runs `attempt` against the leader of one group until it succeeds, fails for good, is
    /// refused with WrongGroup, or `deadline` passes (`limits.total` is its length, for
    /// messages). `routed_with` is the number of the shard map that chose this group (0 if
    /// none): a replica refusing from an older config is behind, and another one is tried. Each attempt gets at most `limits.per_attempt` of the remaining time as its
    /// gRPC deadline; a node that does not answer within it is passed over for the next replica.
    /// Failed attempts are recorded in `attempts`.
    pub(super) async fn call_group<T, F, Fut>(
        &self,
        leader: &Leader,
        routed_with: u64,
        deadline: Deadline,
        limits: Limits,
        attempts: &Attempts,
        mut attempt: F,
    ) -> std::result::Result<T, GroupError>
    where
        F: FnMut(Connection, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let mut backoff = Backoff::default();
        // A fresh leader hint is followed at once, but only once between two sleeps so that
        // stale hints pointing at each other cannot spin.
        let mut redirected_since_sleep = false;
        loop {
            let Some(remaining) = deadline.remaining() else {
                return Err(Error::DeadlineExceeded.into());
            };
            let target = leader.target();
            let connection = self.connection(&target)?;
            let limit = remaining.min(limits.per_attempt);
            let mut status = match tokio::time::timeout(limit, attempt(connection, limit)).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(status)) => status,
                Err(_elapsed) => {
                    // Cut off, it may still be applied where it was sent.
                    attempts.cut_off(&target);
                    tonic::Status::deadline_exceeded(format!("{target} did not answer within {limit:?}"))
                }
            };
            attempts.failed(&target, &status);
            let step = match status.code() {
                // Only this attempt ran out of time (its own bound, or the node gave up on it):
                // another replica may answer before the request's deadline.
                tonic::Code::DeadlineExceeded if deadline.remaining().is_some() => NextStep::Rotate,
                tonic::Code::DeadlineExceeded => return Err(Error::DeadlineExceeded.into()),
                _ => next_step(&status, routed_with),
            };
            match step {
                NextStep::Fail => return Err(Error::from_status(status).into()),
                NextStep::WrongGroup(_) => return Err(GroupError::WrongGroup(status)),
                NextStep::Redirect(addr) if addr != target && !redirected_since_sleep => {
                    leader.redirect(addr);
                    redirected_since_sleep = true;
                    continue;
                }
                NextStep::Redirect(addr) => leader.redirect(addr),
                NextStep::Rotate => leader.rotate_from(&target),
                NextStep::Behind(config_num) => {
                    leader.rotate_from(&target);
                    status = tonic::Status::unavailable(format!(
                        "{target} is behind: it answered from config {config_num}, the shard map is \
                         {routed_with}: {}",
                        status.message()
                    ));
                }
            }
            let delay = retry_delay(&status, &mut backoff, rand::random::<f64>());
            match deadline.sleep_before_retry(Instant::now(), delay) {
                Some(pause) => {
                    tokio::time::sleep(pause).await;
                    redirected_since_sleep = false;
                }
                None => return Err(give_up(status, limits.total).into()),
            }
        }
    }

    /// Runs `attempt` once against one specific node.
    pub(super) async fn call_endpoint<T, F, Fut>(&self, endpoint: &str, timeout: Duration, attempt: F) -> Result<T>
    where
        F: FnOnce(Channel, Duration) -> Fut,
        Fut: Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let channel = self.connection(endpoint)?.channel;
        match tokio::time::timeout(timeout, attempt(channel, timeout)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(status)) => Err(Error::from_status(status)),
            Err(_elapsed) => Err(Error::DeadlineExceeded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(endpoints: &[&str]) -> Leader {
        Leader::new(endpoints.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn rotation_walks_the_list_and_wraps() {
        let leader = leader(&["a:1", "b:2", "c:3"]);
        leader.rotate_from("a:1");
        assert_eq!(leader.target(), "b:2");
        leader.rotate_from("b:2");
        leader.rotate_from("c:3");
        assert_eq!(leader.target(), "a:1");
    }

    #[test]
    fn a_stale_failure_does_not_move_the_target() {
        let leader = leader(&["a:1", "b:2", "c:3"]);
        leader.redirect("c:3".into());
        leader.rotate_from("a:1");
        assert_eq!(leader.target(), "c:3");
    }

    #[test]
    fn a_failed_leader_outside_the_list_restarts_rotation() {
        let leader = leader(&["a:1", "b:2"]);
        leader.redirect("leader:9".into());
        leader.rotate_from("leader:9");
        assert_eq!(leader.target(), "a:1");
    }

    #[test]
    fn new_members_keep_a_target_that_is_still_a_member() {
        let leader = leader(&["a:1", "b:2"]);
        leader.redirect("b:2".into());
        leader.set_endpoints(&["b:2".to_string(), "c:3".to_string()]);
        assert_eq!(leader.target(), "b:2");
        leader.set_endpoints(&["d:4".to_string()]);
        assert_eq!(leader.target(), "d:4", "a removed member is no longer tried");
        leader.rotate_from("d:4");
        assert_eq!(leader.target(), "d:4");
    }
}
