//! Generated protobuf and gRPC code, in one place so the client and the
//! servers share types without the client importing server modules.

/// `log.v1`: the book's client API, with sidelog's additions.
pub mod log {
    tonic::include_proto!("log.v1");
}

/// `sidelog.v1`: the peer service and cluster administration.
pub mod sidelog {
    tonic::include_proto!("sidelog.v1");
}

/// Encoded descriptor set of our protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));
