//! Compiles the protobuf definitions with protox (pure Rust), so a fresh
//! machine needs no system `protoc`.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/log/v1/log.proto", "proto/sidelog/v1/peer.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Reflection serves this descriptor set so `grpcurl list` works.
    std::fs::write(out.join("descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure()
        .bytes(".log.v1.Record.value")
        .bytes(".sidelog.v1")
        .compile_fds(fds)?;
    Ok(())
}
