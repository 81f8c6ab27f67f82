//! Helpers for tests that need a real server (a RabbitMQ broker), shared by every crate's tests.
//!
//! Such a test runs against the server when one answers, is skipped with a note on stderr when
//! none does, and fails when none does in CI (`CI=true`), where nothing may be skipped.

pub mod pki;

use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

/// The broker tests use when `TWTR_TEST_AMQP_URL` is not set.
pub const DEFAULT_TEST_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Whether this is a CI run, where no test may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The RabbitMQ URL for tests, if a broker answers there (see the module docs).
pub fn amqp_url() -> Option<String> {
    let url = std::env::var("TWTR_TEST_AMQP_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_AMQP_URL.to_owned());
    if answers(&url) {
        return Some(url);
    }
    assert!(
        !in_ci(),
        "no RabbitMQ broker answers at {url}, and CI may not skip tests (scripts/test.sh starts one)"
    );
    eprintln!("skipped: no RabbitMQ broker answers at {url} (scripts/test.sh starts one)");
    None
}

/// Whether something accepts TCP connections at the URL's host and port.
fn answers(url: &str) -> bool {
    let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    };
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// The CQL node tests use when `TWTR_TEST_SCYLLA_NODES` is not set (`scripts/cassandra.sh start`
/// runs one there).
pub const DEFAULT_TEST_CQL_NODES: &str = "127.0.0.1:9042";

/// The CQL contact points for tests (`TWTR_TEST_SCYLLA_NODES`, comma-separated `host[:port]`),
/// if the first one answers (see the module docs).
pub fn cql_nodes() -> Option<Vec<String>> {
    let configured = std::env::var("TWTR_TEST_SCYLLA_NODES")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_TEST_CQL_NODES.to_owned());
    let nodes: Vec<String> = configured
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    let first = nodes.first().cloned().unwrap_or_default();
    let host_port = if first.contains(':') {
        first.clone()
    } else {
        format!("{first}:9042")
    };
    if answers(&format!("cql://{host_port}")) {
        return Some(nodes);
    }
    assert!(
        !in_ci(),
        "no CQL node answers at {host_port}, and CI may not skip tests (scripts/cassandra.sh start runs one)"
    );
    eprintln!("skipped: no CQL node answers at {host_port} (scripts/cassandra.sh start runs one)");
    None
}
