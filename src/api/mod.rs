//! The services clients talk to: the gRPC `log.v1.Log` API, gRPC health and
//! reflection, and the HTTP/JSON routes. These translate and delegate to a
//! [`LogNode`](crate::node::LogNode); they know nothing of disk formats.

pub mod conn_limit;
pub mod convert;
pub mod http;
pub mod idle_timeout;
pub mod log_service;
pub mod observe;

/// Generated protobuf and gRPC code for `log.v1`.
pub mod pb {
    tonic::include_proto!("log.v1");
}

/// Encoded descriptor set of our protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

pub use log_service::LogService;
