//! Shards move between data groups while clients keep writing: joins, leaves, churn, and
//! failures of either side in the middle of a move.

use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use shardkv_client::Client;
use shardkv_proto::shard_for_key;
use shardkv_proto::v1::QueryRequest;
use shardkv_proto::v1::ShardConfig;
use shardkv_proto::v1::meta_client::MetaClient;

use crate::counters::Load;
use crate::counters::check;
use crate::counters::check_replica_agrees;
use crate::harness::WAIT;
use crate::harness::wait_for;
use crate::harness::write_bulk;
use crate::proxy::SilencingProxy;
use crate::sharded::ShardedCluster;

/// Keys and value size of the bulk data loaded before a move, so the move takes long enough
/// to fail in the middle of it (about 24 MiB).
const BULK_KEYS: usize = 1500;
const BULK_VALUE_BYTES: usize = 16 << 10;
/// Bulk keys rewritten while a copy runs.
const REWRITTEN: usize = 200;

fn bulk_value(i: usize) -> Vec<u8> {
    let seed = format!("bulk-{i}-");
    seed.bytes().cycle().take(BULK_VALUE_BYTES).collect()
}

/// Every bulk key still holds its value.
async fn check_bulk(client: &Client) {
    for i in 0..BULK_KEYS {
        let value = client.get(format!("bulk-{i}")).await.expect("bulk read");
        assert!(value.as_deref() == Some(bulk_value(i).as_slice()), "bulk-{i} lost or damaged after the move");
    }
}

/// Waits until the leader of `group` reports a shard moving in (copied ahead of the move, or
/// pulled), and returns the leader.
async fn leader_while_moving_in(cluster: &ShardedCluster, group: u64) -> u64 {
    let data = &cluster.groups[&group];
    wait_for(&format!("group {group} to be copying or pulling a shard"), WAIT, || async {
        for id in data.running() {
            let status = data.status(id).await?;
            let moving_in = |state: &str| matches!(state, "copying" | "copied" | "pulling" | "catching_up");
            if status.state == "Leader" && status.shards.iter().any(|s| moving_in(&s.state)) {
                return Some(id);
            }
        }
        None
    })
    .await
}

const SHARDS: u32 = 16;

/// Reads from `replica`'s own state (serializable reads) every one of the first `keys` bulk
/// keys that `config` gives to `group`: each holds its value.
async fn check_bulk_held_by(replica: &Client, config: &ShardConfig, group: u64, keys: usize) {
    let mut checked = 0;
    for i in 0..keys {
        let key = format!("bulk-{i}");
        if config.shard_groups[shard_for_key(key.as_bytes(), SHARDS) as usize] != group {
            continue;
        }
        let value = replica.get_serializable(key).await.expect("read from the replica");
        assert!(value.as_deref() == Some(bulk_value(i).as_slice()), "bulk-{i} lost or damaged on the replica");
        checked += 1;
    }
    assert!(checked > 0, "group {group} owns no bulk key");
}

/// Shards whose owner differs anywhere along the sequence of configs.
fn moved_shards(configs: &[ShardConfig]) -> BTreeSet<u32> {
    configs
        .windows(2)
        .flat_map(|pair| {
            (0..SHARDS).filter(move |&s| pair[0].shard_groups[s as usize] != pair[1].shard_groups[s as usize])
        })
        .collect()
}

/// A meta group and group 1 of three replicas on `net`, settled, with 8 writers running.
async fn group_one_under_load(net: u8) -> (ShardedCluster, Client, ShardConfig, Load) {
    let cluster = ShardedCluster::start(net, 3, SHARDS, &[1]).await;
    let client = cluster.client();
    let first = cluster.wait_settled().await;
    let load = Load::start(&client, 8, 8, 100_000, Duration::from_secs(120), SHARDS);
    (cluster, client, first, load)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_joins_then_another_leaves_under_load() {
    let (mut cluster, client, first, load) = group_one_under_load(21).await;

    cluster.start_group(2).await;
    let joined = cluster.join(2).await;
    assert_eq!(joined.num, first.num + 1);
    let after_join = cluster.wait_settled().await;
    let shards_of = |config: &ShardConfig, g: u64| config.shard_groups.iter().filter(|&&o| o == g).count();
    assert_eq!(shards_of(&after_join, 2), SHARDS as usize / 2, "the new group owns half the shards");

    cluster.leave(1).await;
    let after_leave = cluster.wait_settled().await;
    assert_eq!(shards_of(&after_leave, 2), SHARDS as usize, "the remaining group owns every shard");
    let group_one = cluster.groups[&1].leader().await;
    let status = cluster.groups[&1].status(group_one).await.expect("status of the group that left");
    assert!(status.shards.is_empty(), "the group that left still holds {:?}", status.shards);

    let reports = load.finish().await;
    let moved = moved_shards(&[first, after_join, after_leave]);
    check(&client, &reports, &moved).await;
}

/// Group 1 holds the bulk data and serves a running load; group 2 has joined and its leader is
/// pulling shards in.
struct MidMove {
    cluster: ShardedCluster,
    client: Client,
    /// The config before the join.
    first: ShardConfig,
    load: Load,
    receiving_leader: u64,
}

impl MidMove {
    async fn start(net: u8) -> MidMove {
        let mut cluster = ShardedCluster::start(net, 3, SHARDS, &[1]).await;
        let client = cluster.client();
        write_bulk(&client, BULK_KEYS, bulk_value).await;
        let first = cluster.wait_settled().await;
        let load = Load::start(&client, 4, 8, 100_000, Duration::from_secs(120), SHARDS);
        cluster.start_group(2).await;
        cluster.join(2).await;
        let receiving_leader = leader_while_moving_in(&cluster, 2).await;
        MidMove { cluster, client, first, load, receiving_leader }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_receiving_leader_mid_move_loses_nothing() {
    let MidMove { mut cluster, client, first, load, receiving_leader: leader } = MidMove::start(25).await;
    let receiver = cluster.groups.get_mut(&2).unwrap();
    receiver.kill9(leader);
    let after = cluster.wait_settled().await;
    cluster.groups.get_mut(&2).unwrap().start_node(leader);

    let reports = load.finish().await;
    check(&client, &reports, &moved_shards(&[first, after])).await;
    check_bulk(&client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_the_sending_group_mid_move_loses_nothing() {
    let MidMove { mut cluster, client, first, load, .. } = MidMove::start(29).await;
    let sender = cluster.groups.get_mut(&1).unwrap();
    for id in sender.running() {
        sender.kill9(id);
    }
    for id in 1..=3 {
        sender.start_node(id);
    }
    let after = cluster.wait_settled().await;

    let reports = load.finish().await;
    check(&client, &reports, &moved_shards(&[first, after])).await;
    check_bulk(&client).await;
}

/// A copy reaches each replica as table files that it ingests, durable at once while the
/// writes around them are not (they skip the WAL). A follower of the receiving group killed
/// right after it ingests a file restarts at its last flush and applies the log from there,
/// which deletes the shard's range and ingests the files again, in log order: once caught up,
/// it holds every copied value and agrees with the leader on every counter.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_killed_after_ingesting_a_copy_file_applies_it_again_and_loses_nothing() {
    let mut cluster = ShardedCluster::start(234, 3, SHARDS, &[1]).await;
    let client = cluster.client();
    let bulk_keys = 4 * BULK_KEYS;
    write_bulk(&client, bulk_keys, bulk_value).await;
    let first = cluster.wait_settled().await;
    let load = Load::start(&client, 4, 8, 100_000, Duration::from_secs(150), SHARDS);
    cluster.start_group(2).await;
    let receivers = &cluster.groups[&2];
    let leader = receivers.leader().await;
    let follower = receivers.running().into_iter().find(|&id| id != leader).unwrap();
    cluster.join(2).await;
    let receivers = &cluster.groups[&2];
    wait_for("the follower to ingest a copy file", WAIT, || async {
        receivers.log(follower).contains("ingested a copy file").then_some(())
    })
    .await;
    let receivers = cluster.groups.get_mut(&2).unwrap();
    receivers.kill9(follower);
    let logged_before = receivers.log(follower).len();
    receivers.start_node(follower);
    let after = cluster.wait_settled().await;
    let receivers = &cluster.groups[&2];
    let restart_log = receivers.log(follower)[logged_before..].to_string();
    assert!(restart_log.contains("ingested a copy file"), "the restarted follower ingested nothing:\n{restart_log}");

    let reports = load.finish().await;
    check(&client, &reports, &moved_shards(&[first, after.clone()])).await;
    receivers.wait_applied_as_leader(follower).await;
    let replica = receivers.client_for([follower]);
    check_bulk_held_by(&replica, &after, 2, bulk_keys).await;
    let owned_here = |key: &str| after.shard_groups[shard_for_key(key.as_bytes(), SHARDS) as usize] == 2;
    check_replica_agrees(&replica, &client, &reports, owned_here).await;
}

/// A data group's leader asks the meta group for its next config and may wait for it: the
/// meta leader holds such a Query until that config exists (then answers it at once) or the
/// wait has passed (then answers the latest).
#[tokio::test(flavor = "multi_thread")]
async fn a_query_for_the_next_config_waits_for_it_and_is_answered_once_it_exists() {
    let cluster = ShardedCluster::start(235, 3, SHARDS, &[1]).await;
    let latest = cluster.wait_settled().await;
    let leader = cluster.meta.leader().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.meta.grpc_addr(leader)))
        .unwrap()
        .connect()
        .await
        .expect("connect to the meta leader");
    let next = QueryRequest { num: latest.num + 1, wait_ms: 400 };

    let started = Instant::now();
    let answer = MetaClient::new(channel.clone()).query(next).await.expect("query").into_inner().config.unwrap();
    assert_eq!(answer.num, latest.num, "no config was made: the answer is the latest one");
    assert!(started.elapsed() >= Duration::from_millis(400), "answered after {:?}, before the wait", started.elapsed());

    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let asked = QueryRequest { num: next.num, wait_ms: 5_000 };
        let answer = MetaClient::new(channel).query(asked).await.expect("query").into_inner().config.unwrap();
        (answer.num, started.elapsed())
    });
    cluster.admin.move_shard(0, 1).await.expect("move");
    let (answered, after) = waiting.await.unwrap();
    assert_eq!(answered, next.num, "the waiting query was answered with the config made meanwhile");
    assert!(after < Duration::from_secs(5), "answered only when the wait ran out ({after:?})");
}

/// The sum of counter `name` over the running replicas of `group`, from their metrics.
async fn group_counter(cluster: &ShardedCluster, group: u64, name: &str) -> u64 {
    let data = &cluster.groups[&group];
    let mut total = 0;
    for id in data.running() {
        let (_, body) = data.http_get(id, "/metrics").await;
        let line = format!("{name} ");
        total += body.lines().find_map(|l| l.strip_prefix(line.as_str())?.parse::<u64>().ok()).unwrap_or(0);
    }
    total
}

/// A joining group copies the shards it gains while group 1 still serves them; once group 1
/// freezes them, only what changed since the copy is pulled. Writes, overwrites and deletes
/// made while the copy runs all reach the new owner, and no acknowledged write is lost or
/// applied twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_joining_group_copies_shards_while_they_are_served_and_pulls_only_the_changes() {
    let mut cluster = ShardedCluster::start(47, 3, SHARDS, &[1]).await;
    let client = cluster.client();
    // Enough data (about 96 MiB) that the copy is still running when the writes below start.
    let bulk_keys = 4 * BULK_KEYS;
    write_bulk(&client, bulk_keys, bulk_value).await;
    const DOOMED: usize = 300;
    for i in 0..DOOMED {
        client.put(format!("doomed-{i}"), b"to be deleted".to_vec()).await.expect("put");
    }
    let first = cluster.wait_settled().await;
    let load = Load::start(&client, 4, 8, 100_000, Duration::from_secs(120), SHARDS);
    cluster.start_group(2).await;
    cluster.join(2).await;
    let receivers = &cluster.groups[&2];
    wait_for("group 2 to be copying a shard", WAIT, || async {
        let status = receivers.status(receivers.leader().await).await?;
        status.shards.iter().any(|s| s.state == "copying").then_some(())
    })
    .await;
    // While the copy runs: delete some keys and rewrite some bulk keys, concurrently.
    let writers: Vec<_> = (0..16)
        .map(|t| {
            let client = client.new_session();
            tokio::spawn(async move {
                for i in (t..DOOMED).step_by(16) {
                    assert!(client.delete(format!("doomed-{i}")).await.expect("delete"), "doomed-{i} existed");
                }
                for i in (t..REWRITTEN).step_by(16) {
                    client.put(format!("bulk-{i}"), b"rewritten".to_vec()).await.expect("rewrite");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let after = cluster.wait_settled().await;

    for i in 0..DOOMED {
        assert_eq!(client.get(format!("doomed-{i}")).await.expect("get"), None, "doomed-{i} came back after the move");
    }
    for i in 0..bulk_keys {
        let value = client.get(format!("bulk-{i}")).await.expect("bulk read");
        let expected = if i < REWRITTEN { b"rewritten".to_vec() } else { bulk_value(i) };
        assert!(value == Some(expected), "bulk-{i} lost, damaged or stale after the move");
    }
    let copied = group_counter(&cluster, 2, "shardkv_shard_copied_bytes_total").await;
    let pulled = group_counter(&cluster, 2, "shardkv_shard_moved_bytes_total").await;
    eprintln!("group 2 copied {copied} bytes ahead of the move and pulled {pulled} bytes from frozen shards");
    let half = (bulk_keys * BULK_VALUE_BYTES / 2) as u64;
    assert!(copied >= half * 8 / 10, "group 2 copied only {copied} bytes of about {half} ahead of the move");
    assert!(pulled < copied / 4, "group 2 pulled {pulled} bytes from frozen shards, against {copied} copied ahead");

    let reports = load.finish().await;
    check(&client, &reports, &moved_shards(&[first, after])).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn joins_and_leaves_in_a_row_converge() {
    let mut cluster = ShardedCluster::start(33, 1, SHARDS, &[1]).await;
    let client = cluster.client();
    let mut configs = vec![cluster.wait_settled().await];
    for group in 2..=4 {
        cluster.start_group(group).await;
    }
    let load = Load::start(&client, 8, 8, 100_000, Duration::from_secs(120), SHARDS);
    // No waiting in between: the groups work through the configs one number at a time.
    configs.push(cluster.join(2).await);
    configs.push(cluster.join(3).await);
    configs.push(cluster.leave(1).await);
    configs.push(cluster.join(4).await);
    configs.push(cluster.leave(2).await);
    configs.push(cluster.join(1).await);
    let last = cluster.wait_settled().await;
    assert_eq!(last.num, configs.last().unwrap().num, "no config beyond the last change");
    let owners: BTreeSet<u64> = last.shard_groups.iter().copied().collect();
    assert_eq!(owners, BTreeSet::from([1, 3, 4]), "the groups in the map own every shard");

    let reports = load.finish().await;
    let moved = moved_shards(&configs);
    check(&client, &reports, &moved).await;
}

/// Waits until the leader of `group` reports applying `config_num` and holding no shard (what
/// an operator waits for before it deletes a group that left).
async fn wait_holds_nothing(cluster: &ShardedCluster, group: u64, config_num: u64) {
    let data = &cluster.groups[&group];
    wait_for(&format!("group {group} to hold no shard at config {config_num}"), WAIT, || async {
        let status = data.status(data.leader().await).await?;
        (status.config_num >= config_num && status.shards.is_empty()).then_some(())
    })
    .await;
}

/// A group id that left and comes back with empty data (a new group under the old name)
/// starts at the config it joined in again: it pulls from the owners at that config, not
/// from those of its first join, which have long moved on and would never answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_group_that_returns_with_empty_data_joins_cleanly() {
    let (mut cluster, client, first, load) = group_one_under_load(210).await;

    cluster.start_group(2).await;
    let joined = cluster.join(2).await;
    cluster.wait_settled().await;
    let left = cluster.leave(2).await;
    cluster.wait_settled().await;
    wait_holds_nothing(&cluster, 2, left.num).await;
    cluster.delete_group(2);

    cluster.start_group(2).await;
    let rejoined = cluster.join(2).await;
    let started = Instant::now();
    let last = cluster.wait_settled_within(WAIT).await;
    eprintln!("every shard served {:?} after group 2 joined again with empty data", started.elapsed());
    assert_eq!(last.num, rejoined.num, "no config beyond the rejoin");
    assert_eq!(last.shard_groups.iter().filter(|&&g| g == 2).count(), SHARDS as usize / 2);

    let reports = load.finish().await;
    check(&client, &reports, &moved_shards(&[first, joined, left, rejoined])).await;
}

/// (shard, owner before, owner after) for every shard whose owner differs.
fn changes(from: &ShardConfig, to: &ShardConfig) -> Vec<(u32, u64, u64)> {
    let pairs = from.shard_groups.iter().zip(&to.shard_groups).enumerate();
    pairs.filter(|(_, (a, b))| a != b).map(|(shard, (&a, &b))| (shard as u32, a, b)).collect()
}

/// A member added to a group whose log still names copy files (no snapshot since the copy):
/// the leader's first append to it, a probe starting past its empty log, names files while
/// it knows no member; Raft refuses the probe, the leader goes back to the log's start, whose
/// membership names whom to fetch from, and the member joins, ingests the files and serves
/// the copied shards from its own state.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_added_after_a_copy_fetches_the_copy_files_its_log_names() {
    let mut cluster = ShardedCluster::start(70, 3, SHARDS, &[1]).await;
    let client = cluster.client();
    let bulk_keys = 2 * BULK_KEYS;
    write_bulk(&client, bulk_keys, bulk_value).await;
    cluster.start_group(2).await;
    cluster.join(2).await;
    let after = cluster.wait_settled().await;
    let receivers = cluster.groups.get_mut(&2).unwrap();
    let leader = receivers.leader().await;
    assert!(receivers.log(leader).contains("ingested a copy file"), "group 2 received no copy file");

    receivers.start_node(4);
    let members = receivers.client_for([1, 2, 3]);
    let added = tokio::time::timeout(WAIT, members.add_learner(4, receivers.grpc_addr(4), true)).await;
    added.expect("the new member caught up in time").expect("add learner");
    members.change_membership(vec![1, 2, 3, 4], false).await.expect("make it a voter");
    let receivers = &cluster.groups[&2];
    receivers.wait_applied_as_leader(4).await;
    let log = receivers.log(4);
    assert!(log.contains("ingested a copy file"), "the new member ingested no copy file:\n{log}");

    check_bulk_held_by(&receivers.client_for([4]), &after, 2, bulk_keys).await;
}

/// Bytes that do not compress (copy files are compressed), from `i` alone.
fn incompressible_value(i: usize) -> Vec<u8> {
    let mut state = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..BULK_VALUE_BYTES)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The connection a copy travels on goes silent mid-stream, neither end closing it (as when
/// the network drops it): HTTP/2 keepalive closes it, the copy starts again on a new
/// connection, and the move finishes with nothing lost. Without keepalive the copy waits on
/// the silent stream for as long as TCP keeps the connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_copy_whose_connection_goes_silent_starts_again_and_the_move_finishes() {
    let mut cluster = ShardedCluster::start(60, 3, SHARDS, &[]).await;
    cluster.start_group(1).await;
    // Other groups (and clients) reach group 1 through proxies on 127.0.69.0/24.
    let mut proxies = Vec::new();
    let mut members = Vec::new();
    for id in 1..=3 {
        let listen = format!("127.0.69.{id}:7100");
        proxies.push(SilencingProxy::start(&listen, cluster.groups[&1].grpc_addr(id), 4 << 20).await);
        members.push((id, listen));
    }
    cluster.admin.join(1, members).await.expect("join group 1");
    cluster.wait_settled().await;
    let client = cluster.client();
    let keys = 2 * BULK_KEYS;
    write_bulk(&client, keys, incompressible_value).await;

    cluster.start_group(2).await;
    cluster.join(2).await;
    let started = Instant::now();
    cluster.wait_settled().await;
    eprintln!("the move settled {:?} after group 2 joined", started.elapsed());
    assert!(proxies.iter().any(SilencingProxy::silenced), "no connection to group 1 carried 4 MiB: nothing was cut");

    for i in 0..keys {
        let value = client.get(format!("bulk-{i}")).await.expect("bulk read");
        assert!(value == Some(incompressible_value(i)), "bulk-{i} lost or damaged after the move");
    }
    let copied = group_counter(&cluster, 2, "shardkv_shard_copied_bytes_total").await;
    let half = (keys * BULK_VALUE_BYTES / 2) as u64;
    assert!(copied >= half * 8 / 10, "group 2 copied only {copied} bytes of about {half} ahead of the move");
}

/// Group 2 hands a shard to group 3 but loses its majority before it can hear that group 3
/// installed it; group 3 then hands the shard on, leaves and is deleted. When group 2 is back,
/// the receiver is gone: the shard's later owner confirms the installation instead, and group
/// 2 drops its copy and catches up with the latest config.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_off_settles_after_its_receiver_is_deleted() {
    // Four shards, so that each join and leave below moves exactly one.
    let mut cluster = ShardedCluster::start(215, 3, 4, &[1, 2]).await;
    let client = cluster.client();
    let keys: Vec<String> = (0..64).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        client.put(key.clone(), format!("value of {key}")).await.expect("put");
    }
    let before = cluster.wait_settled().await;

    // Group 3 joins before any replica of it runs, so group 2 keeps the shard frozen for it.
    cluster.add_group(3);
    let with_three = cluster.join(3).await;
    let [(shard, 2, 3)] = changes(&before, &with_three)[..] else {
        panic!("the join should move one shard from group 2 to group 3: {:?}", changes(&before, &with_three));
    };
    let senders = &cluster.groups[&2];
    wait_for("every replica of group 2 to freeze the shard for group 3", WAIT, || async {
        for id in senders.running() {
            let status = senders.status(id).await?;
            status.shards.iter().find(|s| s.shard == shard && s.state == "be_pulled")?;
        }
        Some(())
    })
    .await;
    // Group 2 keeps one replica, which serves the pull but can commit nothing.
    let leader = senders.leader().await;
    let other = senders.running().into_iter().find(|&id| id != leader).expect("a follower");
    let senders = cluster.groups.get_mut(&2).expect("group 2");
    senders.kill9(leader);
    senders.kill9(other);

    cluster.boot_group(3).await;
    let receivers = &cluster.groups[&3];
    wait_for("group 3 to serve the shard", WAIT, || async {
        let status = receivers.status(receivers.leader().await).await?;
        status.shards.iter().find(|s| s.shard == shard && s.state == "serving").map(drop)
    })
    .await;

    // Group 3 hands the shard on to a group other than 2, leaves, and is deleted.
    cluster.start_group(4).await;
    let with_four = cluster.join(4).await;
    let without_three = cluster.leave(3).await;
    let next_owner = without_three.shard_groups[shard as usize];
    assert_eq!(with_four.shard_groups[shard as usize], 3, "the join of group 4 should leave the shard with group 3");
    assert_ne!(next_owner, 2, "the shard should move on to a group other than 2");
    wait_holds_nothing(&cluster, 3, without_three.num).await;
    cluster.delete_group(3);

    let senders = cluster.groups.get_mut(&2).expect("group 2");
    senders.start_node(leader);
    senders.start_node(other);
    let started = Instant::now();
    let last = cluster.wait_settled_within(WAIT).await;
    eprintln!("group 2 settled {:?} after its restart", started.elapsed());
    assert_eq!(last.num, without_three.num);
    let senders = &cluster.groups[&2];
    assert!(
        senders.running().into_iter().any(|id| senders.log(id).contains("installation confirmed by a later owner")),
        "group 2's leader should have heard of the installation from group {next_owner}"
    );
    for key in &keys {
        let value = client.get(key.clone()).await.expect("read");
        assert_eq!(value, Some(format!("value of {key}").into_bytes()), "{key}");
    }
}
