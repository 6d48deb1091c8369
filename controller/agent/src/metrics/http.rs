//! The agent's HTTP endpoint for Prometheus and probes: `GET /metrics`
//! (text exposition format), `GET /healthz` (the agent runs) and `GET
//! /readyz` (it serves: see [`Readiness`]). HTTP/1 only, one task per
//! connection, so a slow scraper never holds the agent's main loop. Every
//! pod can reach its node, so the endpoint bounds what a client can hold:
//! a few connections per client address (pods cannot spoof theirs), a cap
//! for all, and deadlines for each connection's headers and its whole life.
//! A pod holding its connections then costs other scrapers and probes
//! nothing; the agent's file descriptors belong to the CNI socket and the
//! maps.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// Content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;
/// Connections one client address may hold at once.
const MAX_PER_CLIENT: usize = 4;
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

/// Connection slots by client address: at most [`MAX_PER_CLIENT`] each,
/// [`MAX_CONNECTIONS`] in all.
#[derive(Clone, Default)]
struct Slots(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// A held slot; dropping it frees it.
struct Slot {
    slots: Slots,
    client: IpAddr,
}

impl Slots {
    fn acquire(&self, client: IpAddr) -> Option<Slot> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = held.values().sum();
        let mine = held.entry(client).or_default();
        if total >= MAX_CONNECTIONS || *mine >= MAX_PER_CLIENT {
            if *mine == 0 {
                held.remove(&client);
            }
            return None;
        }
        *mine += 1;
        Some(Slot {
            slots: self.clone(),
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.client);
            }
        }
    }
}

/// Binds the metrics address; a taken port is a configuration error the
/// agent reports at start, not something to discover at the first scrape.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves scrapes until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Metrics, readiness: Readiness) {
    let slots = Slots::default();
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
        let Some(slot) = slots.acquire(peer.ip()) else {
            debug!(%peer, "too many metrics connections (from this client, or in all); closing");
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

    async fn connect_from(source: [u8; 4], address: SocketAddr) -> tokio::net::TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind a loopback source");
        socket.connect(address).await.expect("connect")
    }

    #[tokio::test]
    async fn a_client_holding_its_connections_costs_others_nothing() {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(serve(listener, Metrics::new(), Readiness::default()));
        let hog = [127, 0, 0, 7];
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(connect_from(hog, address).await);
        }
        // Let the server take what it takes.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut buf = [0u8; 1];
        let mut closed = 0;
        for conn in &mut idle {
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(50), conn.read(&mut buf)).await
            {
                closed += 1;
            }
        }
        assert_eq!(
            closed,
            MAX_CONNECTIONS - MAX_PER_CLIENT,
            "one client holds {MAX_PER_CLIENT}"
        );
        // Everyone else is served meanwhile, every time.
        for _ in 0..20 {
            let mut scraper = connect_from([127, 0, 0, 8], address).await;
            scraper
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            let mut response = String::new();
            scraper.read_to_string(&mut response).await.expect("read");
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        }
        drop(idle);
        server.abort();
    }

    #[test]
    fn slots_are_bounded_per_client_and_in_all_and_freed() {
        let slots = Slots::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let held: Vec<Slot> = (0..MAX_PER_CLIENT)
            .map(|_| slots.acquire(a).expect("slot"))
            .collect();
        assert!(slots.acquire(a).is_none(), "over the per-client limit");
        drop(held);
        assert!(slots.acquire(a).is_some(), "freed when dropped");
        let many: Vec<Slot> = (0..MAX_CONNECTIONS as u32)
            .filter_map(|i| slots.acquire(IpAddr::from((0x0a00_0100 + i).to_be_bytes())))
            .collect();
        assert_eq!(many.len(), MAX_CONNECTIONS);
        assert!(
            slots.acquire([10, 9, 9, 9].into()).is_none(),
            "over the cap"
        );
    }
}
