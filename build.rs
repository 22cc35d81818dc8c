//! Compiles the protobuf definitions with protox (pure Rust), so a fresh
//! machine needs no system `protoc`.

use std::{env, path::PathBuf};

/// The commit this build comes from (`SIDELOG_COMMIT`), for `--version`,
/// the start-up line, `cluster status` and `sidelog_build_info`: git's
/// short hash with `-dirty` for uncommitted changes, `unknown` outside a
/// checkout (or `SIDELOG_COMMIT` given by the builder).
fn commit() -> String {
    if let Ok(c) = env::var("SIDELOG_COMMIT") {
        return c;
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(hash) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{hash}-dirty") } else { hash }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=SIDELOG_COMMIT");
    for f in [".git/HEAD", ".git/index", ".git/packed-refs"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    println!("cargo:rustc-env=SIDELOG_COMMIT={}", commit());
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
