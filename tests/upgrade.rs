//! Upgrades keep every record: a data dir written by the first release
//! opens under this build, and a data dir in a newer format is refused
//! without a byte changed. (The rolling upgrade of a running group from
//! the first release's binary is `tests/e2e/test_upgrade.py`.)

use std::{collections::BTreeMap, path::Path};

use sidelog::{agent::Agent, client::Client, storage::manifest};

use crate::common::config_in;

/// Every file under `dir`, by path, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// `tests/fixtures/v0.1.0-data`: a lone agent of sidelog 0.1.0 (the tag
/// v0.1.0), `--node-id v010`, that took 20 records (`first-release-0` ..
/// `first-release-19`, one `sidelog produce` of 20 lines, then 1 more
/// batch) and stopped on SIGTERM. See tests/fixtures/README.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_from_the_first_release_opens_with_every_record() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v0.1.0-data");
    assert!(!fixture.join(manifest::MANIFEST).exists(), "0.1.0 wrote no FORMAT file");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&fixture, &data);
    let mut config = config_in(data.clone());
    config.node_id = "v010".into();
    let agent = Agent::start(config).await.expect("this build opens 0.1.0's data");
    let mut client = Client::connect(&agent.client_addr.to_string()).await.unwrap();
    for i in 0..21u64 {
        let r = client.consume(i).await.unwrap_or_else(|e| panic!("offset {i}: {e}"));
        assert_eq!(r.offset, i);
        assert_eq!(r.value, format!("first-release-{i}").into_bytes(), "offset {i}");
    }
    assert_eq!(client.consume(21).await.unwrap_err().code(), tonic::Code::OutOfRange);
    assert_eq!(client.produce("second-release").await.unwrap(), 21);
    agent.shutdown().await.unwrap();
    // The dir now says which formats and build wrote it.
    let found = manifest::check(&data).unwrap();
    assert_eq!(found, manifest::Manifest::current(sidelog::version()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_in_a_newer_format_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let agent = Agent::start(config_in(data.clone())).await.unwrap();
    let mut client = Client::connect(&agent.client_addr.to_string()).await.unwrap();
    for i in 0..3 {
        client.produce(format!("r{i}")).await.unwrap();
    }
    agent.shutdown().await.unwrap();
    // A later release wrote it.
    let newer = manifest::Manifest {
        data_format: manifest::DATA_FORMAT + 1,
        ..manifest::Manifest::current("sidelog 9.0.0 (commit future)")
    };
    std::fs::write(data.join(manifest::MANIFEST), serde_json::to_vec(&newer).unwrap()).unwrap();
    // Wait until nothing of the stopped agent holds the log any more (its
    // lock is free), so no late write of its own is taken for ours.
    let lock = std::fs::File::open(data.join("LOCK")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while lock.try_lock().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stopped agent still holds the log"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    lock.unlock().unwrap();
    let before = snapshot(&data);
    let err = match Agent::start(config_in(data.clone())).await {
        Ok(_) => panic!("a newer data format was opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("newer than this build") && err.contains("sidelog 9.0.0") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(snapshot(&data), before, "a refused data dir must not change");
}
