//! A real HTTP server on 127.0.0.1 for guests to call: it records every request it gets and
//! answers in the ways the outbound tests need (echo, redirect, a huge body, a slow drip, a
//! status of choice).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;

/// One request the server got.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Its method.
    pub method: String,
    /// Its path and query.
    pub uri: String,
    /// Its headers, names lowercase.
    pub headers: BTreeMap<String, String>,
    /// Its body, as text.
    pub body: String,
}

/// A running upstream server; it stops when the test's runtime does.
#[derive(Clone)]
pub struct Upstream {
    /// Where it listens.
    pub address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    /// Starts a server on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        let address = listener.local_addr().expect("bound");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let router = Router::new()
            .route("/{*path}", any(answer))
            .with_state(Arc::clone(&seen));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { address, seen }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin())
    }

    /// Every request so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

#[derive(serde::Deserialize)]
struct To {
    to: Option<String>,
}

/// `/hello`: a small JSON answer. `/echo`: each request header back as `x-echo-NAME`.
/// `/echo-body`: the request headers as the body. `/redirect?to=URL`: 302 to it. `/big`: 1 GiB
/// streamed. `/large`: 2 MiB with its length declared. `/drip`: a byte a second, for ever.
/// `/slow`: `/hello` after 50 ms. `/stall`: no answer for an hour. `/status/CODE`: that
/// status. `/v1/charges`: 201, as a payments service charges. Anything else: 404.
async fn answer(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: Method,
    uri: Uri,
    Path(path): Path<String>,
    Query(to): Query<To>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        headers: headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    match path.as_str() {
        "hello" => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"hello":"world"}"#,
        )
            .into_response(),
        "echo" => {
            let mut response = "echoed".into_response();
            for (name, value) in &headers {
                if let Ok(echo) = header::HeaderName::try_from(format!("x-echo-{name}")) {
                    response.headers_mut().insert(echo, value.clone());
                }
            }
            response
        }
        "echo-body" => headers
            .iter()
            .map(|(name, value)| format!("{name}: {}\n", String::from_utf8_lossy(value.as_bytes())))
            .collect::<String>()
            .into_response(),
        "large" => vec![b'x'; 2 << 20].into_response(),
        "v1/charges" => (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"id":"ch_1","status":"succeeded"}"#,
        )
            .into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            r#"{"hello":"world"}"#.into_response()
        }
        "stall" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::NO_CONTENT.into_response()
        }
        "redirect" => (
            StatusCode::FOUND,
            [(header::LOCATION, to.to.unwrap_or_default())],
        )
            .into_response(),
        "big" => {
            let chunk = Bytes::from(vec![b'x'; 64 << 10]);
            let chunks = futures::stream::repeat(chunk)
                .take((1 << 30) / (64 << 10))
                .map(Ok::<_, Infallible>);
            Body::from_stream(chunks).into_response()
        }
        "drip" => {
            let drops = futures::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<_, Infallible>(Bytes::from_static(b".")), ()))
            });
            Body::from_stream(drops).into_response()
        }
        status if status.starts_with("status/") => {
            StatusCode::from_u16(status["status/".len()..].parse().unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
