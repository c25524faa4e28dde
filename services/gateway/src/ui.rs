//! The web dashboard at `/ui`: static assets embedded in the binary (it must work on an
//! air-gapped machine), talking to the public HTTP API like any other client.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;

use crate::AppState;

const INDEX_HTML: &str = include_str!("../ui/index.html");

/// `/ui` and its assets.
pub fn router() -> Router<AppState> {
    Router::new().route("/ui", get(index))
}

async fn index() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        INDEX_HTML,
    )
        .into_response()
}

/// Refuses requests a browser makes on behalf of another site. Placeholder: lets
/// everything through until the dashboard's checks land.
pub async fn same_origin(request: Request, next: Next) -> Response {
    next.run(request).await
}
