//! How to reach the CQL cluster and how to lay keyspaces out on it: [`CqlConfig`], the
//! [`Replication`] a new keyspace gets, the [`ConsistencySettings`] every statement runs at, and
//! [`keyspace`], the one place a service's keyspace name is made.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use scylla::statement::{Consistency, SerialConsistency};

use super::CqlError;

/// The keyspace prefix when none is configured: keyspaces are `twtr_users`, `twtr_tweets`, ...
pub const DEFAULT_KEYSPACE_PREFIX: &str = "twtr";
/// How long one store call may take when none is configured: every attempt, retry and speculative
/// execution of a statement included. Long enough for one server-side timeout (ScyllaDB's are 2 s
/// for writes and 5 s for reads, 10 s for a range) plus a retry on another node after it; no
/// longer than the gateway's default request deadline, past which nobody waits for the answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest keyspace name we make. Cassandra allows 48 characters (ScyllaDB more); staying within
/// the smaller limit keeps one schema valid on both.
pub const MAX_KEYSPACE_LEN: usize = 48;

/// Everything needed to connect to the cluster and create keyspaces on it.
///
/// `Debug` is derived because no field is secret; credentials, when they arrive, must go in a
/// field that redacts itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CqlConfig {
    /// Contact points, `host` or `host:port` (port 9042 when omitted). The driver discovers the
    /// rest of the cluster from any one of them.
    pub nodes: Vec<String>,
    /// Keyspaces are `<prefix>_<service>`, so several deployments (or test runs) can share one
    /// cluster.
    pub keyspace_prefix: String,
    /// Used only when a keyspace is created; an existing keyspace keeps its replication
    /// (changing it is an operator's `ALTER KEYSPACE` followed by a repair).
    pub replication: Replication,
    pub consistency: ConsistencySettings,
    /// The datacenter this process runs in. When set, requests go to its replicas first, which is
    /// what makes `LOCAL_QUORUM` local.
    pub local_dc: Option<String>,
    /// The bound on every store call (see [`DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
}

impl CqlConfig {
    /// Defaults (prefix `twtr`, RF 1, `LOCAL_QUORUM`, a 10 s bound per call) for the given
    /// contact points.
    pub fn new(nodes: Vec<String>) -> Self {
        Self {
            nodes,
            keyspace_prefix: DEFAULT_KEYSPACE_PREFIX.to_owned(),
            replication: Replication::default(),
            consistency: ConsistencySettings::default(),
            local_dc: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The keyspace `service` owns under this configuration.
    pub fn keyspace(&self, service: &str) -> Result<String, CqlError> {
        keyspace(&self.keyspace_prefix, service)
    }
}

/// Consistency levels for the statements twtr runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsistencySettings {
    /// For `SELECT`s.
    pub reads: Consistency,
    /// For everything else (and the session's default).
    pub writes: Consistency,
    /// For the Paxos phase of lightweight transactions (`IF ...`).
    pub serial: SerialConsistency,
}

impl Default for ConsistencySettings {
    /// `LOCAL_QUORUM` both ways (a read always sees an acknowledged write, and a datacenter
    /// outage elsewhere does not stop us) and `LOCAL_SERIAL` for lightweight transactions.
    fn default() -> Self {
        Self {
            reads: Consistency::LocalQuorum,
            writes: Consistency::LocalQuorum,
            serial: SerialConsistency::LocalSerial,
        }
    }
}

/// Parses a consistency level as CQL spells it (`LOCAL_QUORUM`, `quorum`, `one`, ...).
pub fn parse_consistency(s: &str) -> Result<Consistency, CqlError> {
    let level = match s.trim().to_ascii_uppercase().as_str() {
        "ANY" => Consistency::Any,
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        _ => {
            return Err(CqlError::InvalidConfig(format!(
                "unknown consistency level {s:?} (expected e.g. LOCAL_QUORUM, QUORUM, ONE)"
            )));
        }
    };
    Ok(level)
}

/// Parses a serial consistency level: `SERIAL` or `LOCAL_SERIAL`.
pub fn parse_serial_consistency(s: &str) -> Result<SerialConsistency, CqlError> {
    match s.trim().to_ascii_uppercase().as_str() {
        "SERIAL" => Ok(SerialConsistency::Serial),
        "LOCAL_SERIAL" => Ok(SerialConsistency::LocalSerial),
        _ => Err(CqlError::InvalidConfig(format!(
            "unknown serial consistency level {s:?} (expected SERIAL or LOCAL_SERIAL)"
        ))),
    }
}

/// How a new keyspace is replicated.
///
/// Written as a string in configuration: `simple:<factor>` for `SimpleStrategy` (one datacenter;
/// development and tests) or `<dc>:<factor>,<dc>:<factor>...` for `NetworkTopologyStrategy`
/// (production). A datacenter literally named `simple` therefore cannot be configured alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    Simple {
        factor: u32,
    },
    /// Replicas per datacenter, in the order given.
    NetworkTopology {
        dcs: Vec<(String, u32)>,
    },
}

impl Default for Replication {
    /// One replica: right for the single-node development cluster, wrong for production (which
    /// configures `NetworkTopology` with RF 3).
    fn default() -> Self {
        Self::Simple { factor: 1 }
    }
}

impl Replication {
    /// The replication map for `CREATE KEYSPACE ... WITH replication = <this>`. Datacenter names
    /// were checked when parsed, so quoting them cannot break the statement.
    pub fn to_cql(&self) -> String {
        match self {
            Self::Simple { factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Self::NetworkTopology { dcs } => {
                let mut map = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, factor) in dcs {
                    map.push_str(&format!(", '{dc}': {factor}"));
                }
                map.push('}');
                map
            }
        }
    }

    /// Whether a keyspace's stored replication map (from `system_schema.keyspaces`) says the
    /// same as this setting. Class names may be fully qualified there.
    pub fn matches(&self, stored: &std::collections::HashMap<String, String>) -> bool {
        let class = stored.get("class").map(String::as_str).unwrap_or_default();
        let factor_of = |key: &str| stored.get(key).and_then(|f| f.parse::<u32>().ok());
        match self {
            Self::Simple { factor } => {
                class.ends_with("SimpleStrategy")
                    && factor_of("replication_factor") == Some(*factor)
            }
            Self::NetworkTopology { dcs } => {
                let stored_dcs = stored.keys().filter(|k| k.as_str() != "class").count();
                class.ends_with("NetworkTopologyStrategy")
                    && stored_dcs == dcs.len()
                    && dcs.iter().all(|(dc, f)| factor_of(dc) == Some(*f))
            }
        }
    }
}

impl FromStr for Replication {
    type Err = CqlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| {
            CqlError::InvalidConfig(format!(
                "invalid replication {s:?}: {why} (expected `simple:<factor>` or `<dc>:<factor>,...`)"
            ))
        };
        let mut pairs = Vec::new();
        for part in s.split(',') {
            let (name, factor) = part
                .split_once(':')
                .ok_or_else(|| invalid("each entry needs a `:<factor>`"))?;
            let (name, factor) = (name.trim(), factor.trim());
            let factor: u32 = factor
                .parse()
                .map_err(|_| invalid("a replication factor must be a whole number"))?;
            if factor == 0 {
                return Err(invalid("a replication factor must be at least 1"));
            }
            pairs.push((name.to_owned(), factor));
        }
        if let [(name, factor)] = pairs.as_slice()
            && name.eq_ignore_ascii_case("simple")
        {
            return Ok(Self::Simple { factor: *factor });
        }
        for (i, (dc, _)) in pairs.iter().enumerate() {
            if dc.is_empty()
                || !dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(invalid(
                    "a datacenter name is letters, digits, `_`, `-` and `.`",
                ));
            }
            if dc.eq_ignore_ascii_case("simple") {
                return Err(invalid("`simple` stands alone"));
            }
            if pairs[..i].iter().any(|(earlier, _)| earlier == dc) {
                return Err(invalid("a datacenter is listed twice"));
            }
        }
        Ok(Self::NetworkTopology { dcs: pairs })
    }
}

impl fmt::Display for Replication {
    /// The configuration form, which parses back to the same value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Simple { factor } => write!(f, "simple:{factor}"),
            Self::NetworkTopology { dcs } => {
                for (i, (dc, factor)) in dcs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{dc}:{factor}")?;
                }
                Ok(())
            }
        }
    }
}

/// The keyspace a service owns: `<prefix>_<service>`. Checked to be a plain CQL identifier
/// (`[a-z][a-z0-9_]*`, at most [`MAX_KEYSPACE_LEN`] characters) because it is spliced into
/// statements, where a bind marker cannot stand for a keyspace.
pub fn keyspace(prefix: &str, service: &str) -> Result<String, CqlError> {
    let name = format!("{prefix}_{service}");
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= MAX_KEYSPACE_LEN;
    if valid {
        Ok(name)
    } else {
        Err(CqlError::InvalidConfig(format!(
            "invalid keyspace name {name:?} (from prefix {prefix:?} and service {service:?}): \
             it must be a lowercase letter followed by lowercase letters, digits or `_`, \
             at most {MAX_KEYSPACE_LEN} characters"
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_simple_replication() {
        assert_eq!(
            "simple:1".parse::<Replication>().unwrap(),
            Replication::Simple { factor: 1 }
        );
        assert_eq!(
            " Simple : 3 ".parse::<Replication>().unwrap(),
            Replication::Simple { factor: 3 }
        );
    }

    #[test]
    fn parses_network_topology_replication() {
        assert_eq!(
            "dc1:3,us-east1:2".parse::<Replication>().unwrap(),
            Replication::NetworkTopology {
                dcs: vec![("dc1".to_owned(), 3), ("us-east1".to_owned(), 2)]
            }
        );
        assert_eq!(
            "dc1:3".parse::<Replication>().unwrap(),
            Replication::NetworkTopology {
                dcs: vec![("dc1".to_owned(), 3)]
            }
        );
    }

    #[test]
    fn refuses_bad_replication() {
        for bad in [
            "",
            "simple",
            "simple:0",
            "simple:-1",
            "simple:x",
            "dc1:3,",
            "dc1:3,dc1:2",
            "simple:1,dc1:3",
            "d'c:3",
            "dc 1:3",
            ":3",
            "dc1=3",
        ] {
            let err = bad.parse::<Replication>().unwrap_err();
            assert!(
                err.to_string().contains("invalid replication"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn replication_round_trips_through_display() {
        for text in ["simple:1", "simple:3", "dc1:3", "dc1:3,dc2:1"] {
            let parsed: Replication = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn replication_renders_cql_maps() {
        assert_eq!(
            Replication::Simple { factor: 2 }.to_cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 2}"
        );
        assert_eq!(
            "dc1:3,dc2:1".parse::<Replication>().unwrap().to_cql(),
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': 1}"
        );
    }

    #[test]
    fn replication_compares_with_stored_maps() {
        let stored = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let simple = Replication::Simple { factor: 1 };
        assert!(simple.matches(&stored(&[
            ("class", "org.apache.cassandra.locator.SimpleStrategy"),
            ("replication_factor", "1")
        ])));
        assert!(!simple.matches(&stored(&[
            ("class", "SimpleStrategy"),
            ("replication_factor", "3")
        ])));
        let nts: Replication = "dc1:3,dc2:3".parse().unwrap();
        assert!(nts.matches(&stored(&[
            ("class", "NetworkTopologyStrategy"),
            ("dc1", "3"),
            ("dc2", "3")
        ])));
        assert!(!nts.matches(&stored(&[
            ("class", "NetworkTopologyStrategy"),
            ("dc1", "3")
        ])));
    }

    #[test]
    fn keyspace_names_are_checked() {
        assert_eq!(keyspace("twtr", "users").unwrap(), "twtr_users");
        assert_eq!(keyspace("t0a1b2", "feeds").unwrap(), "t0a1b2_feeds");
        for (prefix, service) in [
            ("", "users"),
            ("Twtr", "users"),
            ("1twtr", "users"),
            ("tw-tr", "users"),
            ("twtr", "us ers"),
            ("twtr\"; DROP", "users"),
            (&"x".repeat(43), "users"),
        ] {
            assert!(keyspace(prefix, service).is_err(), "{prefix:?} {service:?}");
        }
        assert!(
            keyspace(&"x".repeat(42), "users").is_ok(),
            "48 characters fit"
        );
    }

    #[test]
    fn consistency_levels_parse() {
        assert_eq!(
            parse_consistency("local_quorum").unwrap(),
            Consistency::LocalQuorum
        );
        assert_eq!(parse_consistency("ONE").unwrap(), Consistency::One);
        assert!(parse_consistency("most").is_err());
        assert_eq!(
            parse_serial_consistency("serial").unwrap(),
            SerialConsistency::Serial
        );
        assert!(parse_serial_consistency("LOCAL_QUORUM").is_err());
    }

    #[test]
    fn defaults_are_local_quorum_and_rf_one() {
        let config = CqlConfig::new(vec!["127.0.0.1".to_owned()]);
        assert_eq!(config.keyspace_prefix, "twtr");
        assert_eq!(config.replication, Replication::Simple { factor: 1 });
        assert_eq!(config.consistency.reads, Consistency::LocalQuorum);
        assert_eq!(config.consistency.writes, Consistency::LocalQuorum);
        assert_eq!(config.consistency.serial, SerialConsistency::LocalSerial);
        assert_eq!(config.keyspace("users").unwrap(), "twtr_users");
    }
}
