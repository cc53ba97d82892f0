//! A sharded cluster of real processes: a meta group on 127.0.`net`.0/24 and data group `g`
//! on 127.0.`net + g`.0/24, all of one cluster id.

use std::collections::BTreeMap;
use std::time::Duration;

use shardkv_client::Client;
use shardkv_proto::v1::ShardConfig;

use crate::harness::Cluster;
use crate::harness::WAIT;
use crate::harness::wait_for;

pub struct ShardedCluster {
    pub meta: Cluster,
    pub groups: BTreeMap<u64, Cluster>,
    net: u8,
    replicas: u64,
    shards: u32,
    /// Admin client of the meta group (Join/Leave, status).
    pub admin: Client,
}

impl ShardedCluster {
    /// A meta group and `groups` data groups of `replicas` replicas each, every group joined
    /// and every shard served (none when `groups` is empty).
    pub async fn start(net: u8, replicas: u64, shards: u32, groups: &[u64]) -> Self {
        let cluster_id = format!("sharded-{net}");
        let shards_arg = shards.to_string();
        let mut meta = Cluster::in_cluster(net, &cluster_id, &["--role", "meta", "--shards", &shards_arg]);
        for id in 1..=replicas {
            meta.start_node(id);
        }
        meta.initialize(1, 1..=replicas).await;
        meta.leader().await;
        let admin = meta.client();
        let mut cluster = Self { meta, groups: BTreeMap::new(), net, replicas, shards, admin };
        for &group in groups {
            cluster.start_group(group).await;
            cluster.join(group).await;
        }
        // Without a group no shard is served, so nothing settles.
        if !groups.is_empty() {
            cluster.wait_settled().await;
        }
        cluster
    }

    pub fn meta_endpoints(&self) -> Vec<String> {
        (1..=self.replicas).map(|id| self.meta.grpc_addr(id)).collect()
    }

    /// A routing client that finds the data groups through the meta group.
    pub fn client(&self) -> Client {
        Client::connect(self.meta_endpoints()).expect("client")
    }

    /// Starts and initialises data group `group`; it serves nothing until it joins.
    pub async fn start_group(&mut self, group: u64) {
        self.add_group(group);
        self.boot_group(group).await;
    }

    /// Gives data group `group` its addresses and data dirs without starting a process, so it
    /// can be joined before it runs.
    pub fn add_group(&mut self, group: u64) {
        let cluster_id = self.meta.cluster_id.clone();
        let (group_arg, shards_arg, meta_arg) =
            (group.to_string(), self.shards.to_string(), self.meta_endpoints().join(","));
        let args = ["--role", "data", "--group-id", &group_arg, "--shards", &shards_arg, "--meta-endpoints", &meta_arg];
        let net = self.net + u8::try_from(group).expect("small group ids");
        self.groups.insert(group, Cluster::in_cluster(net, &cluster_id, &args));
    }

    /// Starts and initialises the replicas of a group added with [`Self::add_group`].
    pub async fn boot_group(&mut self, group: u64) {
        let data = self.groups.get_mut(&group).expect("group added");
        for id in 1..=self.replicas {
            data.start_node(id);
        }
        data.initialize(1, 1..=self.replicas).await;
        data.leader().await;
    }

    /// Kills the replicas of data group `group` and deletes their data, as an operator does
    /// with a group that left and holds no shard.
    pub fn delete_group(&mut self, group: u64) {
        drop(self.groups.remove(&group).expect("group exists"));
    }

    pub async fn join(&self, group: u64) -> ShardConfig {
        let data = &self.groups[&group];
        let members = (1..=self.replicas).map(|id| (id, data.grpc_addr(id))).collect();
        self.admin.join(group, members).await.expect("join")
    }

    pub async fn leave(&self, group: u64) -> ShardConfig {
        self.admin.leave(group).await.expect("leave")
    }

    /// Waits until every group has applied the latest config and no shard is moving.
    pub async fn wait_settled(&self) -> ShardConfig {
        self.wait_settled_within(WAIT * 2).await
    }

    pub async fn wait_settled_within(&self, timeout: Duration) -> ShardConfig {
        wait_for("every shard of the latest config to be served by its owner", timeout, || async {
            let status = self.admin.cluster_status().await.ok()?;
            status.unsettled().is_none().then_some(status.config)
        })
        .await
    }
}
