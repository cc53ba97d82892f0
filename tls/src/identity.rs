//! Identities carried by certificates: a URI SAN `spiffe://shardkv/<cluster>/<role>/<name>`.

use std::fmt;
use std::str::FromStr;

/// Every shardkv identity URI starts with this.
pub const URI_PREFIX: &str = "spiffe://shardkv/";

/// What a certificate's holder is, and so what it may call (the node decides, see its `auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A replica: Raft, shard migration and the calls nodes make on each other.
    Node,
    /// The Kubernetes operator: membership and shard-map changes.
    Operator,
    /// A person or tool allowed what the operator may do.
    Admin,
    /// A data client: reads, writes, the shard map and status.
    Client,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Node, Role::Operator, Role::Admin, Role::Client];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|role| role.as_str() == s).ok_or_else(|| IdentityError::UnknownRole(s.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("unknown role {0:?} (expected node, operator, admin or client)")]
    UnknownRole(String),
    #[error("{0:?} is not of the form {URI_PREFIX}<cluster>/<role>/<name>")]
    Malformed(String),
    #[error("the certificate does not parse: {0}")]
    Unparsable(String),
    #[error("the certificate has no {URI_PREFIX} URI name")]
    Missing,
}

/// Who holds a certificate: its cluster, role and a name for logs and refusals.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub cluster: String,
    pub role: Role,
    pub name: String,
}

/// A component of the URI: non-empty, no '/', printable ASCII without spaces.
fn valid_part(part: &str) -> bool {
    !part.is_empty() && part.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

impl PeerIdentity {
    pub fn new(cluster: &str, role: Role, name: &str) -> Result<Self, IdentityError> {
        let identity = PeerIdentity { cluster: cluster.to_string(), role, name: name.to_string() };
        if !valid_part(cluster) || !valid_part(name) {
            return Err(IdentityError::Malformed(identity.uri()));
        }
        Ok(identity)
    }

    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}/{}", self.cluster, self.role, self.name)
    }

    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(uri.to_string());
        let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(malformed)?;
        let mut parts = rest.split('/');
        let (Some(cluster), Some(role), Some(name), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        PeerIdentity::new(cluster, role.parse()?, name).map_err(|_| malformed())
    }

    /// The identity named by a DER certificate's first shardkv URI SAN.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let uris = crate::san::uris(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let uri = uris.into_iter().find(|uri| uri.starts_with(URI_PREFIX)).ok_or(IdentityError::Missing)?;
        PeerIdentity::from_uri(uri)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_malformed_ones_are_refused() {
        let id = PeerIdentity::new("prod", Role::Operator, "shardkv-operator").unwrap();
        assert_eq!(id.uri(), "spiffe://shardkv/prod/operator/shardkv-operator");
        assert_eq!(PeerIdentity::from_uri(&id.uri()).unwrap(), id);
        for bad in [
            "spiffe://shardkv/prod/operator",
            "spiffe://shardkv/prod/operator/a/b",
            "spiffe://other/prod/node/n",
            "spiffe://shardkv//node/n",
            "spiffe://shardkv/prod/root/n",
            "spiffe://shardkv/prod/node/",
        ] {
            assert!(PeerIdentity::from_uri(bad).is_err(), "{bad} was accepted");
        }
        assert!(PeerIdentity::new("a/b", Role::Node, "n").is_err());
        assert!(PeerIdentity::new("a", Role::Node, "with space").is_err());
    }

    #[test]
    fn roles_parse_from_their_names() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
