//! Black-box tests: the whole mesh on random loopback ports, driven over HTTP and gRPC the way
//! a client would. One test binary (rather than one per file) keeps link time down.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod accounts;
mod backup;
mod binary;
mod clusters;
mod config;
mod cql;
mod dead_letters;
mod degraded;
mod discovery;
mod edge;
mod export;
mod faults;
mod feeds;
mod follows;
mod grpcurl;
mod hostile;
mod live;
mod mesh;
mod notifications;
mod observability;
mod processes;
mod rabbitmq;
mod security;
mod support;
mod tls;
mod tweets;
