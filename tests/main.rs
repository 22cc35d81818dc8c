//! One integration-test binary (one build), one module per area.

mod api;
mod client;
mod cluster;
mod common;
mod discovery;
mod logs;
mod mdns;
mod membership;
mod peer_security;
mod process;
mod robustness;
mod security;
mod storage;
mod support_dns;
mod telemetry;
mod upgrade;
