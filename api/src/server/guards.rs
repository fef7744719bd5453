//! Guards every request passes: bounded metrics labels and no bodies on reads.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::ApiError;
use super::ApiState;
use crate::types::ErrorCode;

pub(super) async fn track(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Only the API's own methods become label values: anything else is `other`, and an
    // unknown path is `unmatched`, so no client can grow the metrics (issue 14 item 2).
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    state.metrics.observe(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// GET, HEAD and DELETE carry no body here: one announced anyway is refused before any
/// handler runs, so nobody can park a large upload on a read route.
pub(super) async fn refuse_read_bodies(request: Request, next: Next) -> Response {
    use axum::http::Method;
    let bodyless = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::DELETE
    );
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if bodyless && has_body {
        return ApiError::new(
            ErrorCode::BodyNotAllowed,
            format!("{} requests take no body", request.method()),
        )
        .into_response();
    }
    next.run(request).await
}
