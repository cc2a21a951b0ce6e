//! The operator console at `/console`: one page and its script and style, embedded in the
//! binary, loading nothing from anywhere else. It signs in with a token the operator pastes
//! (kept in the tab's `sessionStorage`) and uses the `/v1` API like any other client.
//!
//! A host started with a dev token (`./dev run`) on a loopback address hands it to the page at
//! `/console/dev-token`, so that a developer signs in with one click; without one, that route
//! is 404.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::state::AppState;

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// What the page may load and reach: only this host.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The console's routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/console",
            get(|| async { asset("text/html; charset=utf-8", PAGE) }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::permanent("/console") }),
        )
        .route(
            "/console/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/console/dev-token", get(dev_token))
}

/// The bytes the console is made of, in all.
pub fn console_size() -> usize {
    PAGE.len() + SCRIPT.len() + STYLE.len()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The development token, to a page this machine opened by a loopback name: a page of another
/// site that rebinds its own name to 127.0.0.1 sends that name as `Host`, and gets nothing.
async fn dev_token(State(shared): State<AppState>, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let loopback = matches!(name, "127.0.0.1" | "localhost" | "[::1]");
    match &shared.config.console_dev_token {
        Some(token) if loopback => (
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::json!({ "token": token })),
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
