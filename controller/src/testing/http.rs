//! The HTTP side of the fake API server: hyper 1 connections on a loopback listener, each request
//! recorded, routed ([`Route`]) and answered from the [`Store`] in the apiserver's wire format
//! (objects, `{Kind}List`s, `Status` errors, newline-delimited watch events).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::resource::Route;
use super::select::Selector;
use super::store::{ObjectKey, PatchKind, StatusError, Store, WatchRequest};

type Body = BoxBody<Bytes, Infallible>;

/// One request the server received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path, e.g. `/api/v1/pods`.
    pub path: String,
    /// Decoded query parameters.
    pub query: HashMap<String, String>,
}

impl RecordedRequest {
    /// `true` for a watch request.
    pub fn is_watch(&self) -> bool {
        self.method == "GET"
            && self
                .query
                .get("watch")
                .is_some_and(|w| w == "true" || w == "1")
    }

    /// `true` for a list request (a GET of a collection that is not a watch).
    pub fn is_list_of(&self, path: &str) -> bool {
        self.method == "GET" && self.path == path && !self.is_watch()
    }
}

/// What the connections share.
pub struct Shared {
    pub store: Store,
    pub requests: Mutex<Vec<RecordedRequest>>,
}

/// Accepts connections until the task is aborted.
pub async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "fake API server: accept failed");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "fake API server: connection ended");
            }
        });
    }
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query().unwrap_or(""));
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let recorded = RecordedRequest {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
    };
    tracing::debug!(method = %recorded.method, path = %recorded.path, query = ?recorded.query, "fake API server: request");
    shared
        .requests
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(recorded.clone());
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(error) => {
            return error_response(&StatusError::new(400, "BadRequest", error.to_string()));
        }
    };
    let Some(route) = Route::parse(&path, &shared.store.served()) else {
        return error_response(&StatusError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    if query.contains_key("dryRun") {
        return error_response(&StatusError::new(
            400,
            "BadRequest",
            "dryRun is not supported by the fake API server",
        ));
    }
    match answer(&shared.store, &method, route, &query, &content_type, &body) {
        Ok(Answer::Object(code, obj)) => json_response(code, &obj),
        Ok(Answer::Watch(rx, timeout)) => watch_response(rx, timeout),
        Err(error) => error_response(&error),
    }
}

enum Answer {
    Object(StatusCode, Value),
    Watch(tokio::sync::mpsc::UnboundedReceiver<Bytes>, Duration),
}

fn answer(
    store: &Store,
    method: &Method,
    route: Route,
    query: &HashMap<String, String>,
    content_type: &str,
    body: &[u8],
) -> Result<Answer, StatusError> {
    let key = |name: &str| ObjectKey {
        resource: route.resource.clone(),
        namespace: route.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
    };
    let ok = |obj| Ok(Answer::Object(StatusCode::OK, obj));
    match (method, route.name.as_deref()) {
        (&Method::GET, Some(name)) => ok(store.get(&key(name))?),
        (&Method::GET, None) => {
            let selector = Selector::parse(
                query.get("labelSelector").map(String::as_str),
                query.get("fieldSelector").map(String::as_str),
            )
            .map_err(|message| StatusError::new(400, "BadRequest", message))?;
            let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
            if flag("watch") {
                let from = match query.get("resourceVersion").map(String::as_str) {
                    None | Some("") => None,
                    Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                        StatusError::new(
                            400,
                            "BadRequest",
                            format!("resourceVersion {rv:?} is not a number"),
                        )
                    })?),
                };
                let timeout = query
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .unwrap_or(1800);
                let rx = store.watch(WatchRequest {
                    resource: route.resource,
                    namespace: route.namespace,
                    selector,
                    from,
                    bookmarks: flag("allowWatchBookmarks"),
                    initial_events: flag("sendInitialEvents"),
                });
                return Ok(Answer::Watch(rx, Duration::from_secs(timeout)));
            }
            let (items, revision) =
                store.list(&route.resource, route.namespace.as_deref(), &selector);
            ok(json!({
                "kind": format!("{}List", route.resource.kind),
                "apiVersion": route.resource.api_version(),
                "metadata": {"resourceVersion": revision.to_string()},
                "items": items,
            }))
        }
        (&Method::POST, None) => {
            let obj = store.create(
                &route.resource,
                route.namespace.as_deref(),
                parse_body(body)?,
            )?;
            Ok(Answer::Object(StatusCode::CREATED, obj))
        }
        (&Method::PUT, Some(name)) => {
            ok(store.replace(&key(name), parse_body(body)?, route.status)?)
        }
        (&Method::PATCH, Some(name)) => {
            let kind = match content_type.split(';').next().unwrap_or("").trim() {
                "application/merge-patch+json" => PatchKind::Merge,
                "application/apply-patch+yaml" => PatchKind::Apply,
                other => {
                    return Err(StatusError::new(
                        415,
                        "UnsupportedMediaType",
                        format!("the fake API server does not support patches of type {other:?}"),
                    ));
                }
            };
            ok(store.patch(&key(name), parse_body(body)?, kind, route.status)?)
        }
        (&Method::DELETE, Some(name)) => ok(store.delete(&key(name))?),
        _ => Err(StatusError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on this path"),
        )),
    }
}

/// Bodies are JSON (kube-rs sends JSON, also for `apply-patch+yaml`, which YAML parsers accept).
fn parse_body(body: &[u8]) -> Result<Value, StatusError> {
    serde_json::from_slice(body).map_err(|error| {
        StatusError::new(
            400,
            "BadRequest",
            format!("request body is not JSON: {error}"),
        )
    })
}

fn json_response(code: StatusCode, obj: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(obj.to_string())).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(error: &StatusError) -> Response<Body> {
    let code = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &error.to_status())
}

/// A chunked stream of the watch's events, ending when the store drops the watch or after the
/// request's `timeoutSeconds`.
fn watch_response(
    rx: tokio::sync::mpsc::UnboundedReceiver<Bytes>,
    timeout: Duration,
) -> Response<Body> {
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
    })
    .take_until(tokio::time::sleep(timeout));
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(events)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// `a=b&c=d%3De` -> {a: b, c: d=e}.
pub(super) fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
