//! The status page at `GET /`: one self-contained HTML document (styles and script inline,
//! compiled into the binary) that reads `/v1/cluster` and `/v1/leases` like any client.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("status.html");

/// The page only talks to this member; nothing is loaded from elsewhere.
const CSP: &str = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
                   style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'";

#[utoipa::path(get, path = "/", tag = "cluster",
    responses((status = 200, description = "the status page (HTML): members, leader, term, the pool's blocks; reads this API", content_type = "text/html", body = String)))]
pub(super) async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}
