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

/// The conventions clients and servers share beyond the messages: status
/// metadata keys and what they carry.
pub mod meta {
    use tonic::Status;

    /// What a failed write left behind, as a client must know it to decide on
    /// a retry (carried in gRPC metadata and the HTTP JSON error).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Outcome {
        /// Nothing was written: retrying cannot duplicate.
        NotWritten,
        /// It may have been written: a retry may duplicate it.
        Unknown,
    }

    impl Outcome {
        pub fn as_str(self) -> &'static str {
            match self {
                Outcome::NotWritten => "not-written",
                Outcome::Unknown => "unknown",
            }
        }
    }

    /// Metadata on OUT_OF_RANGE statuses: the range the log holds, so clients
    /// can tell "past the end" from "before the first retained record".
    pub const FIRST_OFFSET_KEY: &str = "x-sidelog-first-offset";
    pub const NEXT_OFFSET_KEY: &str = "x-sidelog-next-offset";

    /// Metadata on a not-the-leader UNAVAILABLE: the leader's client address,
    /// so clients redirect without parsing the message.
    pub const LEADER_KEY: &str = "x-sidelog-leader";

    /// Request metadata: `leader` asks a follower to answer not-the-leader
    /// instead of forwarding a write (leader-aware clients send it; plain
    /// clients, like the book's, are forwarded).
    pub const ROUTE_KEY: &str = "x-sidelog-route";

    /// Metadata on an UNAVAILABLE status: what a failed write left behind,
    /// `not-written` (safe to retry) or `unknown` (it may be committed: retry
    /// only an idempotent write). See [`Outcome`].
    pub const OUTCOME_KEY: &str = "x-sidelog-write-outcome";

    /// The write outcome a status carries (`None` from servers that predate it).
    pub fn outcome_of(status: &Status) -> Option<Outcome> {
        match status.metadata().get(OUTCOME_KEY)?.to_str().ok()? {
            "not-written" => Some(Outcome::NotWritten),
            "unknown" => Some(Outcome::Unknown),
            _ => None,
        }
    }

    /// A status made here from a write outcome (forwarding, the routed client).
    pub fn with_outcome(mut status: Status, outcome: Outcome) -> Status {
        status.metadata_mut().insert(
            OUTCOME_KEY,
            tonic::metadata::MetadataValue::from_static(outcome.as_str()),
        );
        status
    }

    /// Whether a failed call never reached a server: the connection could not
    /// be opened (refused, unresolvable), so nothing was sent.
    pub fn never_sent(status: &Status) -> bool {
        // Only this side's own transport errors (the source chain), never a
        // server's message text.
        let mut text = String::new();
        let mut cause = std::error::Error::source(status);
        while let Some(e) = cause {
            text.push_str(&e.to_string().to_ascii_lowercase());
            cause = e.source();
        }
        [
            "tcp connect error",
            "connection refused",
            "dns error",
            "failed to lookup address",
        ]
        .iter()
        .any(|w| text.contains(w))
    }

    /// The leader's client address carried by a not-the-leader status.
    pub fn leader_of(status: &Status) -> Option<String> {
        Some(status.metadata().get(LEADER_KEY)?.to_str().ok()?.to_owned())
    }

    /// The next offset carried by an OUT_OF_RANGE status, if any.
    pub fn next_offset_of(status: &Status) -> Option<u64> {
        status.metadata().get(NEXT_OFFSET_KEY)?.to_str().ok()?.parse().ok()
    }
}
