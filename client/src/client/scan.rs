//! Scans: one page stream per group owning shards, merged in key order.

use std::sync::Arc;

use shardkv_proto::v1::ReadConsistency;
use shardkv_proto::v1::ScanRequest;

use crate::error::Error;
use crate::error::Result;
use crate::retry::Backoff;
use crate::retry::Deadline;
use crate::shard_map::Item;
use crate::shard_map::ScanMerge;
use crate::shard_map::successor;

use super::Client;
use super::Connection;
use super::ScanOptions;
use super::Topology;
use super::kv_client;
use super::read_header;
use super::request;
use super::routing::Attempts;
use super::routing::GroupError;
use super::routing::Leader;
use super::routing::RouteFailure;
use super::routing::pause;
use super::routing::standalone_wrong_group;
use super::routing::unrouted;

impl Client {
    /// Linearizable scan in key order, following continuation tokens until `limit` items or
    /// the end of the range. Each page has its own request deadline.
    ///
    /// In a sharded cluster every group owning shards is asked for the shards it owns, and
    /// the groups' pages are merged in key order. Each page is linearizable within its
    /// group, but the whole scan is not a point-in-time snapshot across shards: a write
    /// acknowledged while the scan runs may or may not be in it, depending on its key.
    pub async fn scan(&self, options: ScanOptions) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let topology = self.topology_by(Deadline::after(self.request_timeout())).await?;
        let mut merge = ScanMerge::new(0, options.limit);
        // Re-planning after the shard map changed is bounded by one request timeout without
        // progress (pages themselves have their own deadlines).
        let mut replan_deadline = Deadline::after(self.request_timeout());
        let mut backoff = Backoff::default();
        loop {
            let (sources, config_num) = match topology {
                Topology::Standalone => (vec![(Arc::clone(&self.shared.seeds), Vec::new())], 0),
                Topology::Sharded => {
                    let map = self.shard_map(replan_deadline).await?;
                    match map.scan_plan() {
                        Ok(plan) => {
                            let sources = plan
                                .into_iter()
                                .map(|(group, shards)| (self.group_leader(&map, group), shards))
                                .collect::<Vec<_>>();
                            (sources, map.num())
                        }
                        Err(unroutable) => {
                            let error = || {
                                Error::Unavailable(format!("cannot scan with shard map {}: {unroutable}", map.num()))
                            };
                            pause(&mut backoff, replan_deadline, error).await?;
                            self.refresh_after(map.num(), replan_deadline).await?;
                            continue;
                        }
                    }
                }
            };
            merge.restart(sources.len());
            // Everything up to the last key emitted is done; a re-planned scan resumes after it.
            let start = match merge.last_key() {
                Some(last) => successor(last).max(options.start.clone()),
                None => options.start.clone(),
            };
            let emitted = merge.emitted();
            let outcome = self.run_scan(&mut merge, &sources, &options, &start, config_num).await;
            if merge.emitted() > emitted {
                replan_deadline = Deadline::after(self.request_timeout());
                backoff = Backoff::default();
            }
            match outcome {
                Ok(()) => return Ok(merge.into_items()),
                Err(GroupError::Failed(error)) => return Err(error),
                Err(GroupError::WrongGroup(status)) if topology == Topology::Standalone => {
                    return Err(standalone_wrong_group(status));
                }
                Err(GroupError::WrongGroup(status)) => {
                    if self.refresh_after(config_num, replan_deadline).await?.num() <= config_num {
                        // The owners have not caught up with this map yet: give them time.
                        let error = || unrouted(RouteFailure::WrongGroup(status), self.request_timeout());
                        pause(&mut backoff, replan_deadline, error).await?;
                    }
                }
            }
        }
    }

    /// Runs the merge over `sources` until it completes or a source fails.
    pub(super) async fn run_scan(
        &self,
        merge: &mut ScanMerge,
        sources: &[(Arc<Leader>, Vec<u32>)],
        options: &ScanOptions,
        start: &[u8],
        config_num: u64,
    ) -> std::result::Result<(), GroupError> {
        while !merge.drain() {
            let wanted = merge.wanted();
            let pages = merge.pending().into_iter().map(|i| {
                let (leader, shards) = &sources[i];
                let message = ScanRequest {
                    header: read_header(config_num),
                    start: start.to_vec(),
                    end: options.end.clone(),
                    prefix: options.prefix.clone(),
                    limit: wanted.map_or(0, |w| u32::try_from(w).unwrap_or(u32::MAX)),
                    continuation: merge.continuation(i).to_vec(),
                    consistency: ReadConsistency::Linearizable.into(),
                    shards: shards.clone(),
                };
                async move {
                    let deadline = Deadline::after(self.request_timeout());
                    let page =
                            self.call_group(
                                leader,
                                config_num,
                                deadline,
                                self.kv_limits(),
                                &Attempts::default(),
                                |Connection { channel, .. }, timeout| {
                                    let message = message.clone();
                                    async move {
                                        Ok(kv_client(channel).scan(request(message, timeout)).await?.into_inner())
                                    }
                                },
                            )
                            .await?;
                    Ok::<_, GroupError>((i, page))
                }
            });
            for page in futures::future::join_all(pages).await {
                let (i, page) = page?;
                let items: Vec<Item> = page.items.into_iter().map(|kv| (kv.key, kv.value)).collect();
                merge.supply(i, items, page.continuation);
            }
        }
        Ok(())
    }
}
