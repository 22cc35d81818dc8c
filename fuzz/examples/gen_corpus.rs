//! Writes the seed inputs of the fuzz targets into `corpus/<target>/seed-*`:
//! real segment files written by the storage layer (clean shutdown, crash,
//! torn tail, two segments), real peer messages from the conversion code,
//! and a few HTTP bodies. Run from `fuzz/`: `cargo run --example gen_corpus`.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use openraft::{EntryPayload, Vote, raft::AppendEntriesRequest};
use prost::Message;
use sidelog::{
    cluster::{
        network::{append_request_to_pb, append_response_to_pb, log_id_to_pb, node_info_to_pb, vote_to_pb},
        pb,
        snapshot::snapshot_id,
        types::{Entry, Membership, NodeInfo, Request, SnapshotMeta, StoredMembership, TypeConfig, log_id},
    },
    storage::{self, Log, LogConfig, encode_body},
};
use sidelog_fuzz::{Input, ModelBatch, file_header, flags, index_of, parse_file_header, valid_chain};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
}

fn main() {
    segments();
    peer_messages();
    http_bodies();
}

/// A log of a few segments: control entries, batches of 1..4 records.
fn segments() {
    let tmp = std::env::temp_dir().join(format!("sidelog-gen-corpus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let config = LogConfig {
        segment_max_bytes: 700,
        index_max_entries: 8,
        initial_index: 1,
        ..LogConfig::default()
    };
    let log = Log::open(&tmp, config.clone()).unwrap();
    log.append(&[storage::Entry::control(b"")]).unwrap();
    for i in 0..14u32 {
        let values: Vec<Vec<u8>> = (0..(i % 4 + 1))
            .map(|j| format!("record {i}.{j}").into_bytes())
            .collect();
        let body = encode_body(&values);
        let mut e = storage::Entry::data(&body, values.len() as u32);
        e.term = 1 + u64::from(i / 5);
        log.append(&[e]).unwrap();
        if i == 6 {
            log.append(&[storage::Entry::control(br#"{"configs":[[1]],"nodes":{"1":{}}}"#)])
                .unwrap();
        }
    }
    log.close().unwrap();

    let mut logs: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    assert!(logs.len() >= 2, "expected several segments");
    let read = |p: &Path| std::fs::read(p).unwrap();
    let idx = |p: &Path| std::fs::read(p.with_extension("idx")).unwrap_or_default();
    let clean = std::fs::read_to_string(tmp.join("CLEAN")).unwrap();
    let clean_entries: u16 = clean.split_whitespace().nth(3).unwrap().parse().unwrap();

    let (sealed, active) = (&logs[logs.len() - 2], &logs[logs.len() - 1]);
    let (sealed_bytes, active_bytes) = (read(sealed), read(active));
    let (sealed_idx, active_idx) = (idx(sealed), idx(active));
    // The active index is pre-sized to its capacity: keep the used entries.
    let active_idx = &active_idx[..(usize::from(clean_entries) * 16).min(active_idx.len())];
    let seed = |name: &str, input: Input<'_>| write("segment_recovery", name, &input.encode());
    let empty: &[u8] = &[];
    // The harness computes indexes: check it computes what the log wrote.
    let faithful = |b: &[u8]| index_of(&valid_chain(b).unwrap().0);
    assert_eq!(faithful(&sealed_bytes), sealed_idx);
    assert_eq!(faithful(&active_bytes), active_idx);

    // A clean shutdown of two segments: both indexes, the marker.
    seed(
        "clean-two-segments",
        Input {
            flags: flags::TWO_SEGMENTS | flags::CLEAN | flags::ACTIVE_INDEX,
            clean_entries,
            parts: [&sealed_bytes, &active_bytes, empty, empty],
            ..Default::default()
        },
    );
    // A crash: no marker, the sealed index computed by the harness.
    seed(
        "crash-two-segments",
        Input {
            flags: flags::TWO_SEGMENTS,
            parts: [&sealed_bytes, &active_bytes, empty, empty],
            ..Default::default()
        },
    );
    for (n, seg) in [sealed, active].into_iter().enumerate() {
        let bytes = read(seg);
        seed(
            &format!("crash-one-segment-{n}"),
            Input {
                flags: 0,
                parts: [&bytes, empty, empty, empty],
                ..Default::default()
            },
        );
        // Torn in the middle of its last batch.
        let torn = &bytes[..bytes.len() - 7];
        seed(
            &format!("torn-tail-{n}"),
            Input {
                flags: 0,
                parts: [torn, empty, empty, empty],
                ..Default::default()
            },
        );
        // The harness writes the file header and fixes checksums.
        let (base_index, base_offset) = parse_file_header(&bytes).unwrap();
        seed(
            &format!("headers-fixcrc-{n}"),
            Input {
                flags: flags::HEADERS | flags::FIX_CRC,
                base_index,
                base_offset,
                parts: [&bytes[32..], empty, empty, empty],
                ..Default::default()
            },
        );
    }
    // Batches renumbered from an extreme header: the end of the ranges.
    seed(
        "headers-renumber-near-max",
        Input {
            flags: flags::HEADERS | flags::RENUMBER | flags::FIX_CRC,
            base_index: u64::MAX - 20,
            base_offset: u64::MAX - 40,
            parts: [&active_bytes[32..], empty, empty, empty],
            ..Default::default()
        },
    );
    // Two segments from bodies only, the second continuing the first.
    let (base_index, base_offset) = parse_file_header(&sealed_bytes).unwrap();
    seed(
        "headers-continue",
        Input {
            flags: flags::TWO_SEGMENTS | flags::HEADERS | flags::FIX_CRC | flags::CONTINUE,
            base_index,
            base_offset,
            parts: [&sealed_bytes[32..], &active_bytes[32..], empty, empty],
            ..Default::default()
        },
    );
    // One segment after a clean shutdown: the marker vouches for its index.
    seed(
        "clean-one-segment",
        Input {
            flags: flags::CLEAN | flags::ACTIVE_INDEX,
            clean_entries,
            parts: [&active_bytes, empty, empty, empty],
            ..Default::default()
        },
    );
    // An empty log: a header only.
    seed(
        "empty",
        Input {
            flags: flags::HEADERS,
            base_index: 1,
            ..Default::default()
        },
    );
    std::fs::remove_dir_all(&tmp).unwrap();
    regressions();
}

/// Inputs that crashed the storage layer before its fixes (overflows at
/// the ends of the index and offset ranges, a damaged sealed index).
fn regressions() {
    let seed = |name: &str, input: Input<'_>| write("segment_recovery", name, &input.encode());
    let batch = |index: u64, base_offset: u64, values: &[&[u8]]| {
        ModelBatch {
            index,
            base_offset,
            term: 1,
            kind: 0,
            count: values.len() as u32,
            producer_id: 0,
            producer_seq: 0,
            body: encode_body(values),
        }
        .encode()
    };
    let segment = |base_index: u64, base_offset: u64, batches: &[Vec<u8>]| {
        let mut bytes = file_header(base_index, base_offset).to_vec();
        let mut positions = Vec::new();
        for b in batches {
            positions.push(bytes.len() as u64);
            bytes.extend_from_slice(b);
        }
        (bytes, positions)
    };
    let index = |entries: &[(u64, u64)]| -> Vec<u8> {
        entries
            .iter()
            .flat_map(|(p, o)| p.to_le_bytes().into_iter().chain(o.to_le_bytes()))
            .collect()
    };
    let empty: &[u8] = &[];
    let max = u64::MAX;

    let (seg, _) = segment(5, max - 1, &[batch(5, max - 1, &[b"a", b"b"])]);
    seed(
        "regression-offset-overflow",
        Input {
            parts: [&seg, empty, empty, empty],
            ..Default::default()
        },
    );
    let (seg, _) = segment(max, 0, &[batch(max, 0, &[b"a"])]);
    seed(
        "regression-last-index",
        Input {
            parts: [&seg, empty, empty, empty],
            ..Default::default()
        },
    );
    let (seg, _) = segment(max, 0, &[batch(5, 0, &[b"a"])]);
    // No valid batch: the faithful index is empty, so the part is the index.
    let idx = index(&[(32, 0)]);
    seed(
        "regression-last-index-clean",
        Input {
            flags: flags::CLEAN | flags::ACTIVE_INDEX,
            clean_entries: 1,
            parts: [&seg, empty, empty, &idx],
            ..Default::default()
        },
    );
    let (sealed, pos) = segment(
        1,
        0,
        &[batch(1, 0, &[b"x"]), batch(2, 1, &[b"y"]), batch(3, 2, &[b"z"])],
    );
    let (active, _) = segment(4, 3, &[batch(4, 3, &[b"w"])]);
    // Entry 1's offset 1 becomes 0.
    let _ = pos;
    let mut idx = vec![0u8; 24];
    idx.push(1);
    seed(
        "regression-sealed-index-offset",
        Input {
            flags: flags::TWO_SEGMENTS | flags::DAMAGE_SEALED_INDEX,
            parts: [&sealed, &active, &idx, empty],
            ..Default::default()
        },
    );
    let (sealed, pos) = segment(max - 1, 0, &[batch(max - 1, 0, &[b"x"])]);
    let (active, _) = segment(max, 1, &[]);
    // One more entry than the segment has batches.
    let mut idx = vec![0u8; 16];
    idx.extend(index(&[(pos[0], 1)]));
    seed(
        "regression-sealed-index-past-last",
        Input {
            flags: flags::TWO_SEGMENTS | flags::DAMAGE_SEALED_INDEX,
            parts: [&sealed, &active, &idx, empty],
            ..Default::default()
        },
    );
}

fn peer_messages() {
    let seed = |name: &str, which: u8, msg: &dyn Fn() -> Vec<u8>| {
        let mut bytes = vec![which];
        bytes.extend(msg());
        write("peer_messages", name, &bytes);
    };
    let info = |n: u64| NodeInfo {
        name: format!("node-{n}"),
        peer_addr: format!("127.0.0.1:850{n}"),
        client_addr: format!("127.0.0.1:840{n}"),
    };
    let membership = Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        (1..=3).map(|n| (n, info(n))).collect::<BTreeMap<_, _>>(),
    );
    let body = encode_body(&[&b"hello"[..], b"", b"world"]);
    let entries = vec![
        Entry {
            log_id: log_id(2, 5),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(2, 6),
            payload: EntryPayload::Membership(membership.clone()),
        },
        Entry {
            log_id: log_id(2, 7),
            payload: EntryPayload::Normal(Request {
                count: 3,
                body: body.into(),
                base_offset: 0,
            }),
        },
    ];
    let req = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: Some(log_id(1, 4)),
        entries,
        leader_commit: Some(log_id(1, 3)),
    };
    seed("append-entries", 0, &|| append_request_to_pb(&req).encode_to_vec());
    let heartbeat = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(2, 1),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    seed("heartbeat", 0, &|| append_request_to_pb(&heartbeat).encode_to_vec());
    // Regression: the last index has no successor (an overflow, fixed).
    seed("append-entries-last-index", 0, &|| {
        pb::AppendEntriesRequest {
            prev_log_id: Some(pb::LogId {
                term: 1,
                index: u64::MAX,
            }),
            ..Default::default()
        }
        .encode_to_vec()
    });
    seed("vote-request", 1, &|| {
        pb::VoteRequest {
            vote: Some(vote_to_pb(&Vote::new(3, 2))),
            last_log_id: Some(log_id_to_pb(&log_id(2, 7))),
        }
        .encode_to_vec()
    });
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(2, 7)),
        last_membership: StoredMembership::new(Some(log_id(2, 6)), membership),
        snapshot_id: snapshot_id(Some(log_id(2, 7)), 3),
    };
    seed("snapshot-first-chunk", 2, &|| {
        pb::SnapshotChunk {
            vote: Some(vote_to_pb(&Vote::new_committed(2, 1))),
            meta: serde_json::to_vec(&meta).unwrap().into(),
            file: String::new(),
            data: Default::default(),
        }
        .encode_to_vec()
    });
    seed("snapshot-file-chunk", 2, &|| {
        pb::SnapshotChunk {
            file: "00000000000000000001.log".into(),
            data: b"SIDELOG2".to_vec().into(),
            ..Default::default()
        }
        .encode_to_vec()
    });
    seed("forward", 3, &|| {
        pb::ForwardRequest {
            values: vec![b"a".to_vec().into(), Default::default(), b"ccc".to_vec().into()],
        }
        .encode_to_vec()
    });
    seed("join", 4, &|| {
        pb::JoinRequest {
            node: Some(node_info_to_pb(&info(4))),
        }
        .encode_to_vec()
    });
    use openraft::raft::AppendEntriesResponse as R;
    let responses = || {
        [
            R::Success,
            R::PartialSuccess(Some(log_id(2, 6))),
            R::Conflict,
            R::HigherVote(Vote::new(4, 3)),
        ]
    };
    for n in 0..4 {
        seed(&format!("append-response-{n}"), 5, &|| {
            let r = responses().into_iter().nth(n).unwrap();
            append_response_to_pb(r).encode_to_vec()
        });
    }
    seed("vote-response", 6, &|| {
        pb::VoteResponse {
            vote: Some(vote_to_pb(&Vote::new(3, 2))),
            vote_granted: true,
            last_log_id: Some(log_id_to_pb(&log_id(2, 7))),
        }
        .encode_to_vec()
    });
    seed("hello-response", 7, &|| {
        pb::HelloResponse {
            node: Some(node_info_to_pb(&info(1))),
            initialized: true,
            leader: Some(node_info_to_pb(&info(2))),
            bootstrap_expect: 3,
        }
        .encode_to_vec()
    });
}

fn http_bodies() {
    for (name, body) in [
        ("produce", r#"{"record":{"value":"TGV0J3MgR28gIzEK"}}"#),
        ("produce-empty-value", r#"{"record":{}}"#),
        ("produce-no-record", r#"{}"#),
        ("produce-bad-base64", r#"{"record":{"value":"not base64!"}}"#),
        ("consume-number", r#"{"offset":0}"#),
        ("consume-string", r#"{"offset":"18446744073709551615"}"#),
        ("consume-negative", r#"{"offset":-1}"#),
        ("consume-float", r#"{"offset":1.5}"#),
        ("offset-path", "42"),
        ("offset-path-plus", "+7"),
        ("empty", ""),
    ] {
        write("http_bodies", name, body.as_bytes());
    }
}
