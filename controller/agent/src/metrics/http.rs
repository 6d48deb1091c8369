//! The agent's HTTP endpoint for Prometheus and probes: `GET /metrics`
//! (text exposition format), `GET /healthz` (the agent runs) and `GET
//! /readyz` (it serves: see [`Readiness`]). HTTP/1 only, one task per
//! connection, so a slow scraper never holds the agent's main loop. Every
//! pod can reach its node, so the endpoint bounds what a client can hold:
//! a few connections at a time, each with deadlines for its headers and
//! its whole life; the agent's file descriptors belong to the CNI socket
//! and the maps.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// Time for a request's headers to arrive.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Life of one (keep-alive) connection; scrapers reconnect.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Whether the agent is ready, as `GET /readyz` answers (a Kubernetes
/// readiness probe): the cluster state listed and written to the maps,
/// this agent's programs attached, the CNI socket listening. Set by the
/// main loop.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Binds the metrics address; a taken port is a configuration error the
/// agent reports at start, not something to discover at the first scrape.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves scrapes until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics, readiness: Readiness) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "too many metrics connections; closing");
            continue;
        };
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&request, &metrics, &readiness);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => debug!(%peer, %error, "metrics connection"),
                Err(_) => debug!(%peer, "metrics connection lived too long; closed"),
            }
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, TEXT_FORMAT, metrics.render()),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") if readiness.get() => {
            (StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: the cluster state is not in the maps yet\n".to_owned(),
        ),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".to_owned(),
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
    async fn serves_metrics_health_readiness_and_refuses_the_rest() {
        let metrics = Metrics::new();
        metrics.node_problems.set(2);
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let readiness = Readiness::default();
        let server = tokio::spawn(serve(listener, metrics, readiness.clone()));
        let close = "Host: x\r\nConnection: close\r\n\r\n";

        let response = get(address, &format!("GET /readyz HTTP/1.1\r\n{close}")).await;
        assert!(response.starts_with("HTTP/1.1 503"), "{response}");
        readiness.set(true);
        let response = get(address, &format!("GET /readyz HTTP/1.1\r\n{close}")).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");

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

    #[tokio::test]
    async fn idle_clients_cannot_take_every_connection_for_long() {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(serve(listener, Metrics::new(), Readiness::default()));
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(
                tokio::net::TcpStream::connect(address)
                    .await
                    .expect("connect"),
            );
        }
        // Let the server take them all.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut extra = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "connection over the limit stays open: {read:?}"
        );
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let response = get(
            address,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        server.abort();
    }
}
