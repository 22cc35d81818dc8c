//! Conversions at the edge: node errors to gRPC status and HTTP status,
//! storage records to protobuf records.

use tonic::Status;

use super::pb;
use crate::{node::NodeError, security::AuthError, storage::Record};

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::Unauthenticated => Status::unauthenticated(e.to_string()),
            AuthError::PermissionDenied { .. } => Status::permission_denied(e.to_string()),
        }
    }
}

/// The HTTP status for an authorization failure.
pub fn http_auth_status(e: &AuthError) -> http::StatusCode {
    match e {
        AuthError::Unauthenticated => http::StatusCode::UNAUTHORIZED,
        AuthError::PermissionDenied { .. } => http::StatusCode::FORBIDDEN,
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        match &e {
            NodeError::OutOfRange { first, next, .. } => {
                let mut status = Status::out_of_range(e.to_string());
                let md = status.metadata_mut();
                md.insert(FIRST_OFFSET_KEY, (*first).into());
                md.insert(NEXT_OFFSET_KEY, (*next).into());
                status
            }
            NodeError::TooLarge { .. } | NodeError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
            NodeError::Unavailable(_) | NodeError::ShuttingDown | NodeError::Unknown(_) => {
                with_outcome(Status::unavailable(e.to_string()), e.outcome())
            }
            NodeError::NotLeader { leader } => {
                let mut status = with_outcome(Status::unavailable(e.to_string()), e.outcome());
                if let Some(addr) = leader.as_deref().and_then(|l| l.parse().ok()) {
                    status.metadata_mut().insert(LEADER_KEY, addr);
                }
                status
            }
            NodeError::NotFound(_) => Status::not_found(e.to_string()),
            NodeError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            NodeError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            NodeError::Storage(crate::storage::Error::Failed(_)) => {
                with_outcome(Status::unavailable(e.to_string()), e.outcome())
            }
            NodeError::Storage(_) => {
                tracing::error!(cause = %e, "storage error");
                Status::internal(e.to_string())
            }
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
/// only an idempotent write). See `node::Outcome`.
pub const OUTCOME_KEY: &str = "x-sidelog-write-outcome";

/// The write outcome a status carries (`None` from servers that predate it).
pub fn outcome_of(status: &Status) -> Option<crate::node::Outcome> {
    match status.metadata().get(OUTCOME_KEY)?.to_str().ok()? {
        "not-written" => Some(crate::node::Outcome::NotWritten),
        "unknown" => Some(crate::node::Outcome::Unknown),
        _ => None,
    }
}

/// A status made here from a write outcome (forwarding, the routed client).
pub fn with_outcome(mut status: Status, outcome: crate::node::Outcome) -> Status {
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

/// The HTTP status for a node error.
pub fn http_status(e: &NodeError) -> http::StatusCode {
    use http::StatusCode;
    match e {
        NodeError::OutOfRange { .. } => StatusCode::NOT_FOUND,
        NodeError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        NodeError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        NodeError::Unavailable(_)
        | NodeError::Unknown(_)
        | NodeError::ShuttingDown
        | NodeError::NotLeader { .. }
        | NodeError::Storage(crate::storage::Error::Failed(_)) => StatusCode::SERVICE_UNAVAILABLE,
        NodeError::NotFound(_) => StatusCode::NOT_FOUND,
        NodeError::AlreadyExists(_) | NodeError::FailedPrecondition(_) => StatusCode::CONFLICT,
        NodeError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Record> for pb::Record {
    fn from(r: Record) -> pb::Record {
        pb::Record {
            value: r.value,
            offset: r.offset,
            term: r.term,
            r#type: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Outcome;

    #[test]
    fn every_failed_write_says_in_one_place_whether_it_may_be_written() {
        let cases = [
            (NodeError::Unavailable("no leader".into()), Outcome::NotWritten, 503),
            (NodeError::ShuttingDown, Outcome::NotWritten, 503),
            (
                NodeError::NotLeader {
                    leader: Some("127.0.0.1:8400".into()),
                },
                Outcome::NotWritten,
                503,
            ),
            (NodeError::Unknown("timed out".into()), Outcome::Unknown, 503),
        ];
        for (e, outcome, http) in cases {
            assert_eq!(e.outcome(), outcome, "{e}");
            assert_eq!(http_status(&e).as_u16(), http, "{e}");
            assert_eq!(e.same_outcome().outcome(), outcome, "copies keep it: {e}");
            let status = Status::from(e);
            assert_eq!(status.code(), tonic::Code::Unavailable);
            assert_eq!(outcome_of(&status), Some(outcome), "{status:?}");
        }
        let too_large = Status::from(NodeError::TooLarge { len: 2, max: 1 });
        assert_eq!(too_large.code(), tonic::Code::InvalidArgument);
    }
}
