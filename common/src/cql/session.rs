//! The driver session and the per-service handle stores build on: [`connect`] opens one session
//! per process; [`Keyspace`] binds it to one service's keyspace and prepares that service's
//! statements (`{ks}` placeholders substituted, read or write consistency chosen).

use std::sync::Arc;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::statement::prepared::PreparedStatement;

use super::{ConsistencySettings, CqlConfig, CqlError};

/// The placeholder statements use for their keyspace (see the [module docs](super)).
pub const KEYSPACE_PLACEHOLDER: &str = "{ks}";

/// Opens a session to the cluster. Requests are routed token-aware (straight to a replica of the
/// partition) by the driver's default policy, to `local_dc`'s nodes first when it is set; the
/// default execution profile carries the configured write and serial consistency.
pub async fn connect(config: &CqlConfig) -> Result<Arc<Session>, CqlError> {
    if config.nodes.is_empty() {
        return Err(CqlError::InvalidConfig(
            "no CQL contact points configured".to_owned(),
        ));
    }
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.local_dc {
        policy = policy.prefer_datacenter(dc.clone());
    }
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency.writes)
        .serial_consistency(Some(config.consistency.serial))
        .load_balancing_policy(policy.build())
        .build();
    let session = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .default_execution_profile_handle(profile.into_handle())
        .build()
        .await?;
    tracing::info!(nodes = ?config.nodes, local_dc = ?config.local_dc, "connected to cql cluster");
    Ok(Arc::new(session))
}

/// `cql` with every `{ks}` replaced by `keyspace`.
pub fn qualify(cql: &str, keyspace: &str) -> String {
    cql.replace(KEYSPACE_PLACEHOLDER, keyspace)
}

/// One service's keyspace on a shared session: what a CQL store holds on to. Stores prepare all
/// their statements through it once, at startup, so a typo in a statement fails the start rather
/// than the first request.
#[derive(Clone)]
pub struct Keyspace {
    session: Arc<Session>,
    name: String,
    consistency: ConsistencySettings,
}

impl std::fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspace")
            .field("name", &self.name)
            .field("consistency", &self.consistency)
            .finish_non_exhaustive()
    }
}

impl Keyspace {
    /// The keyspace `service` owns under `config`, on `session`.
    pub fn new(session: Arc<Session>, config: &CqlConfig, service: &str) -> Result<Self, CqlError> {
        Ok(Self {
            session,
            name: config.keyspace(service)?,
            consistency: config.consistency,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// A round trip to a node of the cluster (its `system.local` row): whether the store
    /// answers at all. It does not prove a quorum of this keyspace's replicas is up.
    pub async fn ping(&self) -> Result<(), CqlError> {
        self.session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await?;
        Ok(())
    }

    /// Prepares `cql` (tables written `{ks}.<table>`) in this keyspace. A `SELECT` runs at the
    /// configured read consistency, anything else at the write consistency; lightweight
    /// transactions use the configured serial consistency.
    pub async fn prepare(&self, cql: &str) -> Result<PreparedStatement, CqlError> {
        let mut statement = self.session.prepare(qualify(cql, &self.name)).await?;
        let is_read = cql
            .trim_start()
            .get(..6)
            .is_some_and(|verb| verb.eq_ignore_ascii_case("select"));
        statement.set_consistency(if is_read {
            self.consistency.reads
        } else {
            self.consistency.writes
        });
        statement.set_serial_consistency(Some(self.consistency.serial));
        Ok(statement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualifies_every_placeholder() {
        assert_eq!(
            qualify(
                "SELECT a FROM {ks}.t WHERE k IN (SELECT 1 FROM {ks}.u)",
                "twtr_users"
            ),
            "SELECT a FROM twtr_users.t WHERE k IN (SELECT 1 FROM twtr_users.u)"
        );
        assert_eq!(
            qualify("SELECT now() FROM system.local", "x"),
            "SELECT now() FROM system.local"
        );
    }
}
