//! Compiles the protobuf definitions with protox (pure Rust), so a fresh
//! machine needs no system `protoc`.

use std::{env, path::PathBuf};

/// Runs git in this package's directory; `None` on any failure.
fn git(args: &[&str]) -> Option<String> {
    std::process::Command::new("git")
        .arg("--no-optional-locks") // `status` must not rewrite the index
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// The commit this build comes from (`SIDELOG_COMMIT`), for `--version`,
/// the start-up line, `cluster status` and `sidelog_build_info`: git's
/// short hash with `-dirty` for uncommitted changes to tracked files,
/// `unknown` outside this package's own checkout (a tarball inside another
/// repository, say), or `SIDELOG_COMMIT` given by the builder. Asks cargo
/// to run again when HEAD, the branch it points to, packed refs or the
/// index change (paths from `git rev-parse --git-path`, so a worktree,
/// whose `.git` is a file, works too).
fn commit() -> String {
    if let Ok(c) = env::var("SIDELOG_COMMIT") {
        return c;
    }
    let here = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let top = git(&["rev-parse", "--show-toplevel"]);
    let same = |a: &str, b: &str| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !top.as_deref().is_some_and(|t| same(t, &here)) {
        return "unknown".into();
    }
    let mut watch = vec!["HEAD".to_owned(), "index".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(branch);
    }
    for w in watch {
        if let Some(p) = git(&["rev-parse", "--git-path", &w]) {
            let p = std::path::Path::new(&here).join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    let Some(hash) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown".into();
    };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{hash}-dirty") } else { hash }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-env-changed=SIDELOG_COMMIT");
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
