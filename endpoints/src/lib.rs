//! The plain-text HTTP endpoints of the controller and the enforcer (`/metrics` in the
//! Prometheus text format, `/healthz`, the controller's `/readyz`): one HTTP/1 server; each
//! binary says what a path answers.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use hyper::StatusCode;

/// What a path answers: a status and a text body.
pub type Answer = (StatusCode, String);

/// `200 ok`, the answer of a health check.
pub fn ok() -> Answer {
    (StatusCode::OK, "ok\n".to_owned())
}

/// `404`, for any path the binary does not serve.
pub fn not_found() -> Answer {
    (StatusCode::NOT_FOUND, "not found\n".to_owned())
}

/// The response to `req`: `answer(path)`, as `text/plain; version=0.0.4` (the content type of
/// the Prometheus text format, plain text for everything else).
pub fn respond<B>(req: &Request<B>, answer: &impl Fn(&str) -> Answer) -> Response<Full<Bytes>> {
    let (status, body) = answer(req.uri().path());
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Serves `answer` on `listener`, one task per connection, until this future is dropped.
pub async fn serve<F>(listener: TcpListener, answer: F) -> std::io::Result<()>
where
    F: Fn(&str) -> Answer + Clone + Send + Sync + 'static,
{
    loop {
        let (stream, _) = listener.accept().await?;
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(&req, &answer);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "endpoint connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn answer(path: &str) -> Answer {
        match path {
            "/healthz" => ok(),
            "/metrics" => (StatusCode::OK, "up 1\n".to_owned()),
            _ => not_found(),
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn answers_each_path_over_real_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, answer));
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(
            metrics.contains("content-type: text/plain; version=0.0.4\r\n"),
            "{metrics}"
        );
        assert!(metrics.ends_with("\r\n\r\nup 1\n"), "{metrics}");
        assert!(get(addr, "/healthz").await.ends_with("\r\n\r\nok\n"));
        assert!(
            get(addr, "/nope")
                .await
                .starts_with("HTTP/1.1 404 Not Found\r\n")
        );
        server.abort();
    }
}
