//! The peer protocol (`proto/sidelog/v1/peer.proto`): protobuf messages
//! from another node, decoded with prost and run through the conversion and
//! validation the peer service and the peer client use
//! (`src/cluster/network.rs`, `src/cluster/service.rs`).
//!
//! The first byte picks the message, the rest is its encoding. Nothing may
//! panic, and what is accepted must be usable downstream:
//! - AppendEntries: accepted entries continue `prev_log_id` without gaps,
//!   every normal entry's body holds exactly its records (what the log
//!   store's append checks again), the entries survive the trip to the
//!   storage format and back (`encode_payload` / `decode_entry`), and the
//!   request survives a trip to protobuf and back.
//! - Vote, snapshot chunks (vote, JSON metadata, snapshot id, file name),
//!   Forward (the leader's batch must be one followers accept), Hello/Join
//!   (node info) and the replies a client decodes.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use openraft::{EntryPayload, Vote, raft::AppendEntriesRequest};
use prost::Message;
use sidelog::{
    cluster::{
        log_store::{decode_entry, encode_payload},
        network::{
            append_request_from_pb, append_request_to_pb, append_response_from_pb, append_response_to_pb,
            check_snapshot_file_name, log_id_from_pb, log_id_to_pb, node_info_from_pb, node_info_to_pb, vote_from_pb,
            vote_to_pb,
        },
        pb,
        snapshot::snapshot_next_offset,
        types::{Entry, Request, SnapshotMeta, TypeConfig, log_id, node_id},
    },
    storage::{self, Batch, Kind, Producer},
};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => append_entries(bytes),
        1 => {
            let Ok(r) = pb::VoteRequest::decode(bytes) else { return };
            // As `PeerService::vote` converts it.
            let vote = vote_from_pb(r.vote);
            let last = r.last_log_id.map(log_id_from_pb);
            assert_eq!(vote_from_pb(Some(vote_to_pb(&vote))), vote);
            if let Some(l) = last {
                assert_eq!(log_id_from_pb(log_id_to_pb(&l)), l);
            }
        }
        2 => snapshot_chunk(bytes),
        3 => forward(bytes),
        4 => {
            let Ok(r) = pb::JoinRequest::decode(bytes) else { return };
            if let Some(n) = r.node {
                let (id, info) = node_info_from_pb(n.clone());
                assert_eq!(id, node_id(&n.id));
                assert_eq!(node_info_to_pb(&info), n);
            }
        }
        5 => {
            // The client side: a peer's AppendEntries reply.
            let Ok(r) = pb::AppendEntriesResponse::decode(bytes) else {
                return;
            };
            let resp = append_response_from_pb(r);
            let again = append_response_from_pb(append_response_to_pb(append_response_from_pb(r)));
            assert_eq!(again, resp);
        }
        6 => {
            let Ok(r) = pb::VoteResponse::decode(bytes) else { return };
            let _ = (vote_from_pb(r.vote), r.last_log_id.map(log_id_from_pb));
        }
        _ => {
            let Ok(r) = pb::HelloResponse::decode(bytes) else {
                return;
            };
            for n in r.node.into_iter().chain(r.leader) {
                let _ = node_info_from_pb(n);
            }
        }
    }
});

fn append_entries(bytes: &[u8]) {
    let Ok(msg) = pb::AppendEntriesRequest::decode(bytes) else {
        return;
    };
    let Ok(req) = append_request_from_pb(msg) else {
        return;
    };
    // No gaps, starting right after prev_log_id.
    let mut expect = req
        .prev_log_id
        .map(|p| p.index.checked_add(1).expect("accepted prev_log_id has a successor"));
    for e in &req.entries {
        if let Some(x) = expect {
            assert_eq!(e.log_id.index, x, "accepted entries must be contiguous");
        }
        expect = Some(e.log_id.index.checked_add(1).expect("accepted entry has a successor"));
    }
    for e in &req.entries {
        check_entry_storable(e);
    }
    // The request survives protobuf and back (what a follower forwards or
    // re-sends is what it received).
    let again = append_request_from_pb(append_request_to_pb(&req)).expect("a converted request converts back");
    assert_eq!(again.vote, req.vote);
    assert_eq!(again.prev_log_id, req.prev_log_id);
    assert_eq!(again.leader_commit, req.leader_commit);
    assert_eq!(again.entries, req.entries);
}

/// What the log store does with an accepted entry: storage must take its
/// body, and reading the batch back must give the same entry.
fn check_entry_storable(e: &Entry) {
    let (kind, count, body) = encode_payload(&e.payload);
    storage::check_body(kind, count, &body).expect("an accepted entry is a valid batch");
    let batch = Batch {
        index: e.log_id.index,
        base_offset: 0,
        term: e.log_id.leader_id.term,
        kind,
        count,
        producer: Producer::default(),
        body,
    };
    let back = decode_entry(batch).expect("a stored entry decodes");
    assert_eq!(&back, e);
}

fn snapshot_chunk(bytes: &[u8]) {
    let Ok(chunk) = pb::SnapshotChunk::decode(bytes) else {
        return;
    };
    // As `receive_snapshot` treats the first chunk...
    let _vote = vote_from_pb(chunk.vote);
    if let Ok(meta) = serde_json::from_slice::<SnapshotMeta>(&chunk.meta) {
        // ... and as `install_snapshot` reads the id.
        let _ = snapshot_next_offset(&meta.snapshot_id);
        let json = serde_json::to_vec(&meta).expect("metadata serializes");
        assert_eq!(serde_json::from_slice::<SnapshotMeta>(&json).expect("round trip"), meta);
    }
    // ... and the chunks that start a file: the file stays in the directory.
    if !chunk.file.is_empty()
        && let Ok(name) = check_snapshot_file_name(&chunk.file)
    {
        let dir = Path::new("/snapshot-in-dir");
        let path = dir.join(name);
        assert_eq!(
            path.parent(),
            Some(dir),
            "{:?} leaves the snapshot directory",
            chunk.file
        );
        assert!(path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".log")));
    }
}

/// A follower's forwarded records, as the leader turns them into one batch
/// (`produce_as_leader`, `proposer::propose`): if the leader takes them,
/// followers must take the entry it replicates.
fn forward(bytes: &[u8]) {
    let Ok(r) = pb::ForwardRequest::decode(bytes) else {
        return;
    };
    if r.values.is_empty() {
        return; // refused by produce_as_leader
    }
    let mut body = Vec::new();
    for v in &r.values {
        storage::push_record(&mut body, v);
    }
    let count = r.values.len() as u32;
    assert_eq!(storage::check_body(Kind::Data, count, &body), Ok(()));
    let entry = Entry {
        log_id: log_id(1, 1),
        payload: EntryPayload::Normal(Request {
            count,
            body: body.into(),
            base_offset: 0,
            op: None,
        }),
    };
    let sent = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 1),
        prev_log_id: Some(log_id(1, 0)),
        entries: vec![entry.clone()],
        leader_commit: None,
    };
    let got = append_request_from_pb(append_request_to_pb(&sent)).expect("followers take what the leader proposes");
    assert_eq!(got.entries, vec![entry.clone()]);
    check_entry_storable(&entry);
}
