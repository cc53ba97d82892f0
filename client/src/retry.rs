//! Pure retry policy: backoff delays, deadlines, and what to do after a failed attempt.

use std::time::{Duration, Instant};

use shardkv_proto::{CONFIG_NUM_HEADER, LEADER_ADDR_HEADER, MOVING_IN_HEADER, OUTCOME_HEADER, OUTCOME_UNKNOWN};

use crate::error::is_connect_failure;

/// First backoff delay after a failed attempt.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(10);
/// Largest backoff delay between two attempts.
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Largest delay before retrying a shard that is moving into the group asked: its move is
/// frozen only for moments, so a doubling backoff would mostly add waiting after it serves.
pub const MOVING_IN_RETRY_MAX: Duration = Duration::from_millis(20);

/// Exponential backoff with jitter: each delay is drawn from [base/2, base], and the base
/// doubles up to a cap. Jitter keeps many clients from retrying in lockstep after a failover.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { base: initial.min(max), max }
    }

    /// The next delay; `unit_jitter` is a number in [0, 1] (random in production).
    pub fn next_delay(&mut self, unit_jitter: f64) -> Duration {
        let half = self.base / 2;
        let delay = half + half.mul_f64(unit_jitter.clamp(0.0, 1.0));
        self.base = (self.base * 2).min(self.max);
        delay
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BACKOFF_INITIAL, BACKOFF_MAX)
    }
}

/// The instant by which a request must have completed.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
}

impl Deadline {
    pub fn after(timeout: Duration) -> Self {
        Self::after_from(Instant::now(), timeout)
    }

    pub fn after_from(now: Instant, timeout: Duration) -> Self {
        Self { at: now + timeout }
    }

    /// Time left at `now`, or `None` once the deadline has passed.
    pub fn remaining_at(&self, now: Instant) -> Option<Duration> {
        self.at.checked_duration_since(now).filter(|left| !left.is_zero())
    }

    pub fn remaining(&self) -> Option<Duration> {
        self.remaining_at(Instant::now())
    }

    /// How long to sleep before the next attempt, or `None` when sleeping `delay` would leave
    /// no time for that attempt.
    pub fn sleep_before_retry(&self, now: Instant, delay: Duration) -> Option<Duration> {
        let left = self.remaining_at(now)?;
        (delay < left).then_some(delay)
    }
}

/// What the client does after an attempt failed with a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Return the error to the caller.
    Fail,
    /// The node named the leader: send the next attempt there.
    Redirect(String),
    /// Try the next endpoint of the list.
    Rotate,
    /// WrongGroup: the group does not serve the key's shard in its config (the number it
    /// named). Refresh the shard map and retry at the owner.
    WrongGroup(u64),
    /// WrongGroup from a replica whose config is older than the shard map the request was
    /// routed with: that replica is behind, not the map. Try another replica of the group.
    Behind(u64),
}

/// Decides the next step from the status of a failed attempt. INVALID_ARGUMENT and
/// FAILED_PRECONDITION are never retried at the same group (a FAILED_PRECONDITION carrying a
/// config number is WrongGroup, retried at the shard's owner). DEADLINE_EXCEEDED fails here:
/// the caller, which knows whether only one attempt or the whole request ran out of time,
/// decides on it before asking. UNAVAILABLE covers both "not the leader" and "the shard is
/// moving into this group"; both are retried. `routed_with` is the number of the shard map the
/// request was routed with (0 when it was not routed by a map).
pub fn next_step(status: &tonic::Status, routed_with: u64) -> NextStep {
    use tonic::Code;
    // A refused TLS handshake is refused by every replica alike.
    if shardkv_tls::problem_of(status).is_some() {
        return NextStep::Fail;
    }
    match status.code() {
        Code::FailedPrecondition => match wrong_group_config(status) {
            Some(config_num) if config_num < routed_with => NextStep::Behind(config_num),
            Some(config_num) => NextStep::WrongGroup(config_num),
            None => NextStep::Fail,
        },
        Code::Unavailable => match leader_hint(status) {
            Some(addr) => NextStep::Redirect(addr),
            None => NextStep::Rotate,
        },
        // A connection reset mid-request or a node shutting down; the session makes a
        // retried write safe.
        Code::Unknown | Code::Cancelled | Code::Aborted => NextStep::Rotate,
        _ => NextStep::Fail,
    }
}

/// What a failed attempt of a write says about its effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEffect {
    /// The attempt certainly applied nothing: a node refused it before proposing it (or applied
    /// it as a refusal), or it was never sent.
    None,
    /// It may have been proposed and may commit; only a retry with the same sequence number is
    /// safe, and if none succeeds the write's outcome is unknown.
    Unknown,
}

/// Classifies a failed write attempt. A node's answer is definite unless the node marked it
/// outcome-unknown. A status this client made itself (it has a source error) means the
/// connection failed: a connection that could not be opened sent nothing, but one cut
/// mid-request may have delivered it.
pub fn attempt_effect(status: &tonic::Status) -> AttemptEffect {
    use std::error::Error as _;
    use tonic::Code;
    if status.metadata().get(OUTCOME_HEADER).is_some_and(|v| v == OUTCOME_UNKNOWN) {
        return AttemptEffect::Unknown;
    }
    if status.source().is_some() {
        return if is_connect_failure(status) { AttemptEffect::None } else { AttemptEffect::Unknown };
    }
    match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::Unavailable => AttemptEffect::None,
        _ => AttemptEffect::Unknown,
    }
}

/// The config number a WrongGroup answer carries, if `status` is one.
pub fn wrong_group_config(status: &tonic::Status) -> Option<u64> {
    if status.code() != tonic::Code::FailedPrecondition {
        return None;
    }
    status.metadata().get(CONFIG_NUM_HEADER)?.to_str().ok()?.trim().parse().ok()
}

/// The delay before the next attempt after `status`: `backoff`'s next one, but never more than
/// `MOVING_IN_RETRY_MAX` while the shard is moving in.
pub fn retry_delay(status: &tonic::Status, backoff: &mut Backoff, unit_jitter: f64) -> Duration {
    let delay = backoff.next_delay(unit_jitter);
    let moving_in = status.code() == tonic::Code::Unavailable && status.metadata().get(MOVING_IN_HEADER).is_some();
    if moving_in { delay.min(MOVING_IN_RETRY_MAX) } else { delay }
}

/// The leader address a follower put in its UNAVAILABLE answer, if any.
pub fn leader_hint(status: &tonic::Status) -> Option<String> {
    let addr = status.metadata().get(LEADER_ADDR_HEADER)?.to_str().ok()?.trim();
    (!addr.is_empty()).then(|| addr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(ms(10), ms(500));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay(1.0)).collect();
        assert_eq!(delays, [ms(10), ms(20), ms(40), ms(80), ms(160), ms(320), ms(500), ms(500)]);
    }

    #[test]
    fn a_shard_moving_in_is_retried_at_short_steady_intervals() {
        let mut moving_in = tonic::Status::unavailable("shard 3 is moving into this group");
        moving_in.metadata_mut().insert(MOVING_IN_HEADER, "1".parse().unwrap());
        let not_leader = tonic::Status::unavailable("not the leader");
        let mut backoff = Backoff::new(ms(10), ms(500));
        let delays: Vec<Duration> = (0..8).map(|_| retry_delay(&moving_in, &mut backoff, 1.0)).collect();
        assert_eq!(delays, [ms(10), ms(20), ms(20), ms(20), ms(20), ms(20), ms(20), ms(20)]);
        assert_eq!(retry_delay(&not_leader, &mut backoff, 1.0), ms(500), "other refusals still back off");
    }

    #[test]
    fn backoff_jitter_stays_within_half_to_full_base() {
        let mut low = Backoff::new(ms(10), ms(500));
        assert_eq!(low.next_delay(0.0), ms(5));
        assert_eq!(low.next_delay(0.0), ms(10));
        let mut clamped = Backoff::new(ms(10), ms(500));
        assert_eq!(clamped.next_delay(7.0), ms(10));
    }

    #[test]
    fn deadline_remaining_shrinks_and_expires() {
        let start = Instant::now();
        let deadline = Deadline::after_from(start, ms(100));
        assert_eq!(deadline.remaining_at(start), Some(ms(100)));
        assert_eq!(deadline.remaining_at(start + ms(60)), Some(ms(40)));
        assert_eq!(deadline.remaining_at(start + ms(100)), None);
        assert_eq!(deadline.remaining_at(start + ms(150)), None);
    }

    #[test]
    fn retry_sleep_never_outlasts_the_deadline() {
        let start = Instant::now();
        let deadline = Deadline::after_from(start, ms(100));
        assert_eq!(deadline.sleep_before_retry(start, ms(30)), Some(ms(30)));
        assert_eq!(deadline.sleep_before_retry(start + ms(80), ms(30)), None);
        assert_eq!(deadline.sleep_before_retry(start + ms(200), ms(1)), None);
    }

    #[test]
    fn unavailable_with_leader_address_redirects() {
        let mut status = tonic::Status::unavailable("not the leader");
        status.metadata_mut().insert(LEADER_ADDR_HEADER, "127.0.0.1:7102".parse().unwrap());
        assert_eq!(next_step(&status, 0), NextStep::Redirect("127.0.0.1:7102".into()));
    }

    #[test]
    fn unavailable_without_hint_rotates() {
        assert_eq!(next_step(&tonic::Status::unavailable("no leader"), 0), NextStep::Rotate);
        let mut empty_hint = tonic::Status::unavailable("no leader");
        empty_hint.metadata_mut().insert(LEADER_ADDR_HEADER, "".parse().unwrap());
        assert_eq!(next_step(&empty_hint, 0), NextStep::Rotate);
    }

    #[test]
    fn failed_precondition_with_a_config_number_is_wrong_group() {
        let mut status = tonic::Status::failed_precondition("wrong group: shard 3");
        status.metadata_mut().insert(CONFIG_NUM_HEADER, "12".parse().unwrap());
        assert_eq!(next_step(&status, 0), NextStep::WrongGroup(12));
        let mut garbled = tonic::Status::failed_precondition("wrong group");
        garbled.metadata_mut().insert(CONFIG_NUM_HEADER, "twelve".parse().unwrap());
        assert_eq!(next_step(&garbled, 0), NextStep::Fail);
        assert_eq!(next_step(&status, 12), NextStep::WrongGroup(12), "as new as the client's map");
        assert_eq!(next_step(&status, 13), NextStep::Behind(12), "older than the client's map");
        let mut not_precondition = tonic::Status::unavailable("moving in");
        not_precondition.metadata_mut().insert(CONFIG_NUM_HEADER, "12".parse().unwrap());
        assert_eq!(wrong_group_config(&not_precondition), None);
    }

    #[test]
    fn answers_are_definite_unless_marked_and_cut_connections_are_not() {
        assert_eq!(attempt_effect(&tonic::Status::unavailable("not the leader")), AttemptEffect::None);
        assert_eq!(attempt_effect(&tonic::Status::failed_precondition("wrong group")), AttemptEffect::None);
        assert_eq!(attempt_effect(&tonic::Status::invalid_argument("empty key")), AttemptEffect::None);
        let mut discarded = tonic::Status::unavailable("log entry discarded on leader change");
        discarded.metadata_mut().insert(OUTCOME_HEADER, OUTCOME_UNKNOWN.parse().unwrap());
        assert_eq!(attempt_effect(&discarded), AttemptEffect::Unknown);
        for cut in [
            tonic::Status::deadline_exceeded("late"),
            tonic::Status::cancelled("cancelled"),
            tonic::Status::unknown("h2 protocol error"),
            tonic::Status::internal("reply did not decode"),
            tonic::Status::from_error(Box::new(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"))),
        ] {
            assert_eq!(attempt_effect(&cut), AttemptEffect::Unknown, "{cut:?}");
        }
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let never_sent = tonic::Status::from_error(Box::new(tonic::ConnectError(Box::new(refused))));
        assert_eq!(attempt_effect(&never_sent), AttemptEffect::None);
    }

    #[test]
    fn caller_errors_are_never_retried() {
        for status in [
            tonic::Status::invalid_argument("empty key"),
            tonic::Status::failed_precondition("wrong cluster"),
            tonic::Status::deadline_exceeded("late"),
            tonic::Status::internal("bug"),
        ] {
            assert_eq!(next_step(&status, 0), NextStep::Fail, "{status:?}");
        }
    }
}
