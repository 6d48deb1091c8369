//! The agent's HTTP endpoint for Prometheus: `GET /metrics` (text
//! exposition format) and `GET /healthz`. HTTP/1 only, one task per
//! connection, so a slow scraper never holds the agent's main loop.

use std::{convert::Infallible, net::SocketAddr};

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds the metrics address; a taken port is a configuration error the
/// agent reports at start, not something to discover at the first scrape.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves scrapes until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause instead of
                // spinning on the error.
                warn!(%error, "accepting a metrics connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&request, &metrics)) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %error, "metrics connection");
            }
        });
    }
}

fn respond(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, TEXT_FORMAT, metrics.render()),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics or /healthz\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(address: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[tokio::test]
    async fn serves_metrics_health_and_refuses_the_rest() {
        let metrics = Metrics::new();
        metrics.node_problems.set(2);
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(serve(listener, metrics));
        let close = "Host: x\r\nConnection: close\r\n\r\n";

        let response = get(address, &format!("GET /metrics HTTP/1.1\r\n{close}")).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(TEXT_FORMAT), "{response}");
        assert!(response.contains("sluice_node_problems 2"), "{response}");

        let response = get(address, &format!("GET /healthz HTTP/1.1\r\n{close}")).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let response = get(address, &format!("GET /nope HTTP/1.1\r\n{close}")).await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        let response = get(address, &format!("POST /metrics HTTP/1.1\r\n{close}")).await;
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");
        // Garbage is the client's problem; the server keeps serving.
        let _ = get(address, "NOT HTTP\r\n\r\n").await;
        let response = get(address, &format!("GET /healthz HTTP/1.1\r\n{close}")).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        server.abort();
    }
}
