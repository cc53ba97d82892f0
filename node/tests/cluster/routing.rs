//! Which replica may answer WrongGroup: only the leader, from a config at least as new as the
//! shard map the request was routed with. Any other answer names the leader, so a client never
//! takes a lagging replica's view for a stale map of its own.

use shardkv_proto::LEADER_ADDR_HEADER;
use shardkv_proto::shard_for_key;
use shardkv_proto::v1::GetRequest;
use shardkv_proto::v1::PutRequest;
use shardkv_proto::v1::ReadConsistency;
use shardkv_proto::v1::RequestHeader;
use tonic::Code;

use crate::sharded::ShardedCluster;

const SHARDS: u32 = 8;

fn leader_hint(status: &tonic::Status) -> Option<&str> {
    status.metadata().get(LEADER_ADDR_HEADER).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_group_comes_only_from_the_leaders_view_as_new_as_the_clients_map() {
    let cluster = ShardedCluster::start(220, 3, SHARDS, &[1, 2]).await;
    let config = cluster.wait_settled().await;
    let shard = (0..SHARDS).find(|&s| config.shard_groups[s as usize] == 2).expect("group 2 owns a shard");
    let key = (0..).map(|i| format!("k{i}")).find(|k| shard_for_key(k.as_bytes(), SHARDS) == shard).unwrap();
    let one = &cluster.groups[&1];
    let leader = one.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let leader_addr = one.grpc_addr(leader);
    let header = |config_num| Some(RequestHeader { client_id: 7, seq: 1, first_unacked_seq: 1, config_num });
    let put =
        |config_num| PutRequest { header: header(config_num), key: key.clone().into_bytes(), value: b"v".to_vec() };
    let get = |config_num, consistency: ReadConsistency| GetRequest {
        header: header(config_num),
        key: key.clone().into_bytes(),
        consistency: consistency.into(),
    };

    // The leader, as new as the client's map: WrongGroup, the client's map is stale.
    let refused = one.kv(leader).await.put(put(config.num)).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("wrong group"), "{refused:?}");

    // A follower of the same config: not its call, it names the leader.
    let refused = one.kv(follower).await.put(put(config.num)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(leader_hint(&refused), Some(leader_addr.as_str()), "{refused:?}");
    let refused = one.kv(follower).await.get(get(config.num, ReadConsistency::Serializable)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "a local read on a follower: {refused:?}");
    assert!(refused.message().contains("not the leader"), "{refused:?}");
    assert_eq!(leader_hint(&refused), Some(leader_addr.as_str()), "{refused:?}");

    // Any replica whose config is older than the client's map says it is behind.
    for id in [leader, follower] {
        let refused = one.kv(id).await.get(get(config.num + 1, ReadConsistency::Linearizable)).await;
        let refused = match refused {
            Err(status) => status,
            Ok(reply) => panic!("node {id} served a shard it does not own: {reply:?}"),
        };
        assert_eq!(refused.code(), Code::Unavailable, "node {id}: {refused:?}");
        if id == leader {
            assert!(refused.message().contains("older than the shard map"), "{refused:?}");
        }
        assert_eq!(leader_hint(&refused), Some(leader_addr.as_str()), "node {id}: {refused:?}");
    }

    // The routing client gets its write to the owner.
    let client = cluster.client();
    client.put(key.as_str(), "routed").await.expect("routed put");
    assert_eq!(client.get(key.as_str()).await.unwrap(), Some(b"routed".to_vec()));
}
