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

pub use crate::pb::meta::{
    FIRST_OFFSET_KEY, LEADER_KEY, NEXT_OFFSET_KEY, OUTCOME_KEY, ROUTE_KEY, leader_of, never_sent, next_offset_of,
    outcome_of, with_outcome,
};

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
