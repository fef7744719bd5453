//! The API's error responses: every error is `{error, code}` with the code's status, and
//! `Retry-After` when retrying helps.

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use evio_raft::{AdmitError, Refusal, RemoveError, RequestError};

use crate::types::{ErrorBody, ErrorCode};

/// Set on a response that failed only because this member is not the leader: the
/// forwarding layer then sends the request on.
#[derive(Debug, Clone)]
pub(super) struct NotLeaderHint(pub(super) Option<(u64, evio_raft::EvioNode)>);

/// An error response: stable code (which fixes the status), message, and `Retry-After`
/// when retrying helps.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    not_leader: Option<NotLeaderHint>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_secs: code.is_retryable().then_some(1),
            not_leader: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, code = %self.code, error = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: self.message,
            code: self.code,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(hint) = self.not_leader {
            response.extensions_mut().insert(hint);
        }
        response
    }
}

impl From<RemoveError> for ApiError {
    fn from(e: RemoveError) -> Self {
        match e {
            RemoveError::NotMember(_) => ApiError::new(ErrorCode::NotFound, e.to_string()),
            RemoveError::IsLeader(_) => ApiError::new(ErrorCode::BadRequest, e.to_string()),
            RemoveError::Request(e) => e.into(),
        }
    }
}

impl From<AdmitError> for ApiError {
    fn from(e: AdmitError) -> Self {
        match e {
            AdmitError::PoolMismatch { .. } => {
                ApiError::new(ErrorCode::PoolMismatch, e.to_string())
            }
            AdmitError::DuplicateName { .. } => {
                ApiError::new(ErrorCode::DuplicateNodeName, e.to_string())
            }
            AdmitError::RecentlyHeard { .. } => {
                ApiError::new(ErrorCode::MemberRecentlyHeard, e.to_string())
            }
            AdmitError::Request(e) => e.into(),
        }
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        match e {
            RequestError::InvalidNodeName(e) => {
                ApiError::new(ErrorCode::InvalidNodeName, e.to_string())
            }
            RequestError::PoolExhausted { .. } => {
                ApiError::new(ErrorCode::PoolExhausted, e.to_string())
            }
            // Answered as 503 only when forwarding to the leader is impossible too.
            RequestError::NotLeader { ref leader } => ApiError {
                not_leader: Some(NotLeaderHint(leader.clone())),
                ..match leader {
                    None => ApiError::new(
                        ErrorCode::NoQuorum,
                        "no leader is known: this member cannot reach a quorum",
                    ),
                    Some(_) => ApiError::new(ErrorCode::NotLeader, e.to_string()),
                }
            },
            RequestError::NoQuorum(_) => ApiError::new(ErrorCode::NoQuorum, e.to_string()),
            RequestError::Refused(ref refusal) => {
                let code = match refusal {
                    Refusal::OutsidePool { .. } => ErrorCode::OutsidePool,
                    Refusal::BlockTaken { .. } => ErrorCode::BlockTaken,
                    Refusal::OwnerHoldsOther { .. } => ErrorCode::HoldsOtherLease,
                    Refusal::NoSuchLease { .. } => ErrorCode::NotFound,
                    Refusal::NotLegacyOwner { .. } => ErrorCode::NotLegacyOwner,
                    Refusal::RevisionMismatch { .. } => ErrorCode::RevisionMismatch,
                };
                ApiError::new(code, e.to_string())
            }
            RequestError::Fatal(_) => ApiError::new(ErrorCode::Internal, e.to_string()),
        }
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

pub(super) fn parse_body<T: serde::de::DeserializeOwned>(
    body: &Bytes,
    what: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidBody, format!("invalid {what} body: {e}")))
}

/// Errors produced below the handlers (tower-http's body limit and timeout, axum's
/// rejections) answer with the same `{error, code}` body as every other error.
pub(super) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "request body too large"),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => {
            (ErrorCode::Timeout, "the request did not complete in time")
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (ErrorCode::InvalidBody, "unsupported content type"),
        s if s.is_client_error() => (ErrorCode::BadRequest, "the request could not be read"),
        _ => (ErrorCode::Internal, "internal error"),
    };
    ApiError::new(code, message).into_response()
}
