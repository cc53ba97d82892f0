//! Which identities may call which RPC, decided from plain data: the caller's certificate
//! identity, this node's cluster id and the RPC's path.
//!
//! - data RPCs (Kv), the shard map (Meta/Query), status (Admin/Status) and health: any identity
//!   of this cluster;
//! - Raft, Migration and Admin/Removed (a leader telling a node it left): nodes only;
//! - every other Admin RPC and Meta Join/Leave/Move: the operator or an admin;
//! - anything else: nobody.

use shardkv_tls::identity::IdentityError;
use shardkv_tls::{PeerIdentity, Role};

/// Who an RPC admits, given that they belong to this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admits {
    AnyMember,
    Nodes,
    Operators,
}

impl Admits {
    fn admits(self, role: Role) -> bool {
        match self {
            Admits::AnyMember => true,
            Admits::Nodes => role == Role::Node,
            Admits::Operators => matches!(role, Role::Operator | Role::Admin),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Admits::AnyMember => "any identity of the cluster",
            Admits::Nodes => "nodes of the cluster",
            Admits::Operators => "the operator or an admin",
        }
    }
}

/// Who the RPC at `path` ("/package.Service/Method") admits; `None` for an unknown RPC.
pub fn admits(path: &str) -> Option<Admits> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    Some(match (service, method) {
        ("shardkv.v1.Kv", _) | ("shardkv.v1.Meta", "Query") | ("shardkv.v1.Admin", "Status") => Admits::AnyMember,
        ("grpc.health.v1.Health" | "grpc.reflection.v1.ServerReflection", _) => Admits::AnyMember,
        ("shardkv.v1.Raft" | "shardkv.v1.Migration", _) | ("shardkv.v1.Admin", "Removed") => Admits::Nodes,
        ("shardkv.v1.Meta", "Join" | "Leave" | "Move") => Admits::Operators,
        (
            "shardkv.v1.Admin",
            "Initialize" | "AddLearner" | "ChangeMembership" | "RemoveLearners" | "TransferLeader" | "TriggerSnapshot"
            | "PrepareStop",
        ) => Admits::Operators,
        _ => return None,
    })
}

/// Why a call was refused; the text is the PERMISSION_DENIED message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{rpc} refused: the client certificate names no shardkv identity ({reason})")]
    NoIdentity { rpc: String, reason: String },
    #[error("{rpc} refused for {identity}: certificate belongs to cluster {theirs}, not {ours}")]
    OtherCluster { rpc: String, identity: String, theirs: String, ours: String },
    #[error("{rpc} refused for {identity}: a {role} may not call it (only {admits})")]
    Role { rpc: String, identity: String, role: Role, admits: &'static str },
    #[error("{rpc} refused for {identity}: unknown RPC")]
    UnknownRpc { rpc: String, identity: String },
}

/// May `caller` (the identity its verified certificate names) call `rpc` on a node of `cluster`?
pub fn authorize(caller: Result<&PeerIdentity, &IdentityError>, cluster: &str, rpc: &str) -> Result<(), Denied> {
    let rpc_name = rpc.to_string();
    let caller = caller.map_err(|e| Denied::NoIdentity { rpc: rpc_name.clone(), reason: e.to_string() })?;
    let identity = caller.uri();
    if caller.cluster != cluster {
        return Err(Denied::OtherCluster {
            rpc: rpc_name,
            identity,
            theirs: caller.cluster.clone(),
            ours: cluster.to_string(),
        });
    }
    let admits = admits(rpc).ok_or_else(|| Denied::UnknownRpc { rpc: rpc_name.clone(), identity: identity.clone() })?;
    if !admits.admits(caller.role) {
        return Err(Denied::Role { rpc: rpc_name, identity, role: caller.role, admits: admits.describe() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(cluster: &str, role: Role) -> PeerIdentity {
        PeerIdentity::new(cluster, role, "x").unwrap()
    }

    fn allowed(role: Role, rpc: &str) -> bool {
        authorize(Ok(&id("c", role)), "c", rpc).is_ok()
    }

    #[test]
    fn data_rpcs_status_and_the_shard_map_admit_every_role() {
        for role in Role::ALL {
            for rpc in
                ["/shardkv.v1.Kv/Put", "/shardkv.v1.Kv/Scan", "/shardkv.v1.Meta/Query", "/shardkv.v1.Admin/Status"]
            {
                assert!(allowed(role, rpc), "{role} {rpc}");
            }
            assert!(allowed(role, "/grpc.health.v1.Health/Check"));
        }
    }

    #[test]
    fn raft_migration_and_removal_notices_admit_nodes_only() {
        for rpc in [
            "/shardkv.v1.Raft/AppendEntries",
            "/shardkv.v1.Raft/Vote",
            "/shardkv.v1.Migration/PullShard",
            "/shardkv.v1.Migration/ShardInstalled",
            "/shardkv.v1.Admin/Removed",
        ] {
            assert!(allowed(Role::Node, rpc), "{rpc}");
            for role in [Role::Client, Role::Operator, Role::Admin] {
                assert!(!allowed(role, rpc), "{role} {rpc}");
            }
        }
    }

    #[test]
    fn reconfiguration_admits_the_operator_and_admins_only() {
        for rpc in [
            "/shardkv.v1.Meta/Join",
            "/shardkv.v1.Meta/Leave",
            "/shardkv.v1.Meta/Move",
            "/shardkv.v1.Admin/Initialize",
            "/shardkv.v1.Admin/ChangeMembership",
            "/shardkv.v1.Admin/AddLearner",
            "/shardkv.v1.Admin/RemoveLearners",
            "/shardkv.v1.Admin/TransferLeader",
            "/shardkv.v1.Admin/TriggerSnapshot",
            "/shardkv.v1.Admin/PrepareStop",
        ] {
            assert!(allowed(Role::Operator, rpc) && allowed(Role::Admin, rpc), "{rpc}");
            assert!(!allowed(Role::Client, rpc) && !allowed(Role::Node, rpc), "{rpc}");
        }
    }

    #[test]
    fn refusals_name_the_identity_the_rpc_and_the_reason() {
        let client = id("c", Role::Client);
        let denied = authorize(Ok(&client), "c", "/shardkv.v1.Meta/Move").unwrap_err();
        assert_eq!(
            denied.to_string(),
            "/shardkv.v1.Meta/Move refused for spiffe://shardkv/c/client/x: a client may not call it (only the \
             operator or an admin)"
        );
        let stranger = id("other", Role::Node);
        let denied = authorize(Ok(&stranger), "c", "/shardkv.v1.Raft/Vote").unwrap_err();
        assert_eq!(
            denied.to_string(),
            "/shardkv.v1.Raft/Vote refused for spiffe://shardkv/other/node/x: certificate belongs to cluster other, \
             not c"
        );
        assert!(matches!(
            authorize(Err(&IdentityError::Missing), "c", "/shardkv.v1.Kv/Get"),
            Err(Denied::NoIdentity { .. })
        ));
        assert!(matches!(
            authorize(Ok(&id("c", Role::Admin)), "c", "/shardkv.v1.Admin/Unknown"),
            Err(Denied::UnknownRpc { .. })
        ));
        assert!(matches!(authorize(Ok(&client), "c", "not-a-path"), Err(Denied::UnknownRpc { .. })));
    }
}
