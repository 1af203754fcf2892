//! The demo's HTTP contract (`shared/spec/demo-http.md`), over real HTTP on
//! loopback: one test binary, a module per part of the contract.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

#[path = "http/accounts.rs"]
mod accounts;
#[path = "common/mod.rs"]
mod common;
#[path = "http/csrf.rs"]
mod csrf;
#[path = "http/migrate.rs"]
mod migrate;
#[path = "http/processes.rs"]
mod processes;
#[path = "http/routes.rs"]
mod routes;
#[path = "http/signed.rs"]
mod signed;
