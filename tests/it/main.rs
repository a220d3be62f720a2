//! errand's integration tests: one binary. `support` holds the TestEnv, a scripted
//! provider on 127.0.0.1:0 and helpers to run the real `errand` binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod admin;
pub(crate) mod api;
mod bench;
mod cli;
mod engine;
mod flows;
mod foundation;
mod process;
