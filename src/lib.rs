//! tenant-edge: an edge ingress routing proxy for multi-tenant SaaS.
//!
//! Every request is resolved at the edge: Host -> tenant -> product (by path) -> the shard
//! holding that tenant's data for that product -> a healthy backend of that shard.
//!
//! # Layout
//!
//! - [`tenant`]: domain types (normalised hosts, ids, placements, the ingress record).
//! - [`fanout`]: the wide fan-out's message format, packing into SNS-sized messages and the consumer's reorder buffer.
//! - [`feed`]: wire formats of the catalogue's documents and of the ordered change streams.
//! - [`routes`]: route snapshots (`routes/*.toml`): schema, validation, path matcher, hot reload.
//! - [`catalogue`]: the write side: SQLite store, compare-and-set HTTP API, ordered change log.
//! - [`tcs`]: the Tenant Context Service: tails the catalogue, serves the `ingress` view.
//! - [`context`]: the edge's embedded tenant-context cache, filled from and pushed by TCS.
//! - [`edge`]: the pingora proxy, backend pools and health, and the admin listener.
//! - [`metrics`]: Prometheus metrics of the edge.
//! - [`demo`]: demo shard backends for the dev stack and tests.
//! - [`dev`]: the whole stack on loopback in one process (`tenant-edge dev`).
//! - [`durable`]: crash-safe replacement of state files (temp file, fsync, rename).
//! - [`ctl`]: the operator CLI over the catalogue API.
//! - [`cli`]: command-line parsing and dispatch to the roles.
//! - [`stack`]: a role run as a child process, ready when it says where it listens.

pub mod aws;
pub mod catalogue;
pub mod cli;
pub mod clock;
pub mod context;
pub mod ctl;
pub mod demo;
pub mod dev;
pub mod durable;
pub mod edge;
pub mod fanout;
pub mod feed;
pub mod http_client;
pub mod metrics;
pub mod routes;
pub mod secrets;
pub mod sidecar;
pub mod stack;
pub mod tcs;
pub mod tenant;
