//! A mocked API server for tests (kube-rs `tower_test` style): a [`kube::Client`] whose requests
//! a test answers one by one, with whole bodies or with streamed watch events.

use std::convert::Infallible;

use http::{Method, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Bytes;
use hyper::body::Frame;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A reply body: whole, or a stream of watch events.
pub type Reply = UnsyncBoxBody<Bytes, Infallible>;
/// The test's end of the mock.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Reply>>;
/// How a test answers one request.
pub type Send = tower_test::mock::SendResponse<Response<Reply>>;

/// A client talking to the mock, and the mock's handle.
pub fn client() -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Reply>>();
    (kube::Client::new(service, "default"), handle)
}

/// One received request.
pub struct Received {
    /// Method.
    pub method: Method,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// The JSON body (Null without one).
    pub body: Value,
}

impl Received {
    /// Whether this is a watch request.
    pub fn is_watch(&self) -> bool {
        self.query.split('&').any(|p| p == "watch=true")
    }
}

/// The next request (panics when the client is gone).
pub async fn next(handle: &mut Handle) -> (Received, Send) {
    let (request, send) = handle.next_request().await.expect("the client went away");
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (
        Received {
            method,
            path,
            query,
            body,
        },
        send,
    )
}

/// A whole JSON reply.
pub fn reply(code: u16, body: &Value) -> Response<Reply> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .unwrap()
}

/// A `Status` failure reply.
pub fn status(code: u16, reason: &str) -> Response<Reply> {
    reply(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": reason, "reason": reason, "code": code}),
    )
}

/// A streamed watch reply, and the sender of its events (`{"type": .., "object": ..}`).
pub fn watch_reply() -> (Response<Reply>, mpsc::Sender<Value>) {
    let (tx, rx) = mpsc::channel::<Value>(64);
    let frames = futures::StreamExt::map(ReceiverStream::new(rx), |event| {
        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{event}\n"))))
    });
    let response = Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(frames).boxed_unsync())
        .unwrap();
    (response, tx)
}
