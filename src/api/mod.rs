//! The services clients talk to: the gRPC `log.v1.Log` API, gRPC health and
//! reflection, and the HTTP/JSON routes. These translate and delegate to a
//! [`LogNode`](crate::node::LogNode); they know nothing of disk formats.

pub mod conn_limit;
pub mod convert;
pub mod http;
pub mod idle_timeout;
pub mod log_service;
pub mod observe;

/// Generated code for `log.v1` (it lives in [`crate::pb`]).
pub use crate::pb::{FILE_DESCRIPTOR_SET, log as pb};

pub use log_service::LogService;
