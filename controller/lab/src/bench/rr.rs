//! Request/response between two network namespaces, in Rust on threads
//! inside them: an echo server and a client that measures transactions on
//! one connection (RR, TCP or UDP, with each transaction's latency) or
//! connections with one transaction each (CRR).
//!
//! Not netperf: the same few lines on every path, no process start-up in a
//! run, and the threads can be pinned. Pinned, client and server share
//! [`CPU`]: on a 2-vCPU VM an unpinned request/response benchmark measures
//! mostly how fast the VM wakes an idle vCPU, so the pinned figure is the
//! one that shows the path's own cost; the unpinned one is what an
//! application without affinity sees.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{
    sched::{sched_setaffinity, CpuSet},
    sys::socket::{setsockopt, sockopt},
    unistd::Pid,
};

use super::{
    stats,
    throughput::{BenchError, BenchOptions},
};
use crate::netns::Netns;

/// The CPU a pinned client and server share.
pub const CPU: usize = 0;
/// The pinned server's port, TCP and UDP (the lab's own pod servers poll
/// for new connections, which a connection-rate benchmark would measure).
pub const PORT: u16 = 8080;
/// The unpinned server's port, TCP and UDP.
pub const UNPINNED_PORT: u16 = 8081;
/// Bytes per request and per answer.
pub const MESSAGE: usize = 32;
/// How long one transaction may take before the run fails (TCP) or the
/// request is sent again (UDP, where a datagram may be lost).
const TIMEOUT: Duration = Duration::from_secs(1);
/// A UDP request unanswered this long is sent again.
const UDP_RETRY: Duration = Duration::from_millis(200);
/// How often the UDP servers look at their stop flag.
const POLL: Duration = Duration::from_millis(100);

/// How long one request/response run of the same-node suites lasts: half
/// an iperf3 run (at least a second), which keeps a suite within its share
/// of the bench's time while a run still holds tens of thousands of
/// transactions.
pub fn period(options: &BenchOptions) -> Duration {
    Duration::from_secs_f64((f64::from(options.seconds) / 2.0).max(1.0))
}

/// Whether client and server run on [`CPU`] or wherever the scheduler puts
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    Pinned,
    Unpinned,
}

impl Pinning {
    /// The port of the server with this pinning.
    pub fn port(self) -> u16 {
        match self {
            Pinning::Pinned => PORT,
            Pinning::Unpinned => UNPINNED_PORT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Echo servers in one namespace: TCP and UDP, pinned on [`PORT`] and
/// unpinned on [`UNPINNED_PORT`]; stopped on drop. Each TCP server serves
/// one connection at a time (a client makes one at a time) with blocking
/// accepts, so a new connection wakes it at once.
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    ns: Netns,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServers {
    pub fn start(ns: Netns) -> Result<Self, BenchError> {
        let bound = ns
            .run(|| -> std::io::Result<_> {
                let mut sockets = Vec::new();
                for pinning in [Pinning::Pinned, Pinning::Unpinned] {
                    let addr = (Ipv4Addr::UNSPECIFIED, pinning.port());
                    sockets.push((pinning, TcpListener::bind(addr)?, UdpSocket::bind(addr)?));
                }
                Ok(sockets)
            })
            .and_then(|bound| bound)
            .map_err(|source| BenchError::Io {
                what: format!("binding the bench servers in {}", ns.name()),
                source,
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (pinning, tcp, udp) in bound {
            udp.set_read_timeout(Some(POLL))
                .map_err(|source| BenchError::Io {
                    what: "setting the UDP server's timeout".into(),
                    source,
                })?;
            let flag = stop.clone();
            threads.push(std::thread::spawn(move || {
                if pinning == Pinning::Pinned && pin().is_err() {
                    return;
                }
                serve_tcp(&tcp, &flag);
            }));
            let flag = stop.clone();
            threads.push(std::thread::spawn(move || {
                if pinning == Pinning::Pinned && pin().is_err() {
                    return;
                }
                serve_udp(&udp, &flag);
            }));
        }
        Ok(Self { stop, ns, threads })
    }
}

fn serve_tcp(listener: &TcpListener, stop: &AtomicBool) {
    let mut buf = [0u8; MESSAGE];
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut conn, _)) = listener.accept() else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        // A client that vanished without a word does not hold the server
        // up for long.
        let _ = conn.set_read_timeout(Some(TIMEOUT));
        while conn.read_exact(&mut buf).is_ok() && conn.write_all(&buf).is_ok() {}
    }
}

fn serve_udp(socket: &UdpSocket, stop: &AtomicBool) {
    let mut buf = [0u8; MESSAGE];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], peer);
        }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // One more connection each wakes the blocking accepts up to see the
        // flag; the UDP servers see it within [`POLL`].
        for pinning in [Pinning::Pinned, Pinning::Unpinned] {
            let _ = self
                .ns
                .run(move || TcpStream::connect((Ipv4Addr::LOCALHOST, pinning.port())));
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One RR run: its rate and every transaction's latency.
#[derive(Debug, Clone, PartialEq)]
pub struct RrRun {
    /// Transactions per second.
    pub rate: f64,
    /// Each transaction's round trip, in µs, in the order made.
    pub latencies_us: Vec<f64>,
}

impl RrRun {
    pub fn percentile(&self, p: f64) -> f64 {
        stats::percentile(&self.latencies_us, p)
    }
}

/// Transactions on one connection (TCP) or socket (UDP) from a thread in
/// `client` to `dst` for `period`.
pub fn rr(
    client: &Netns,
    dst: SocketAddr,
    period: Duration,
    proto: Proto,
    pinning: Pinning,
) -> Result<RrRun, BenchError> {
    in_client(client, dst, move || {
        if pinning == Pinning::Pinned {
            pin()?;
        }
        // Enough room for a fast path's transactions without reallocating
        // in the middle of a run.
        let mut latencies_us = Vec::with_capacity(period.as_millis() as usize * 50);
        let start = Instant::now();
        match proto {
            Proto::Tcp => {
                let mut conn = TcpStream::connect_timeout(&dst, TIMEOUT)?;
                conn.set_nodelay(true)?;
                conn.set_read_timeout(Some(TIMEOUT))?;
                while start.elapsed() < period {
                    let t = Instant::now();
                    transact(&mut conn)?;
                    latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
            Proto::Udp => {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                socket.connect(dst)?;
                socket.set_read_timeout(Some(UDP_RETRY))?;
                let mut sequence = 0u64;
                while start.elapsed() < period {
                    sequence += 1;
                    let t = Instant::now();
                    udp_transact(&socket, sequence)?;
                    latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
                }
            }
        }
        Ok(RrRun {
            rate: latencies_us.len() as f64 / start.elapsed().as_secs_f64(),
            latencies_us,
        })
    })
}

/// New connections per second (connect, one transaction, close) from a
/// thread in `client` to `dst` for `period`.
pub fn crr(
    client: &Netns,
    dst: SocketAddr,
    period: Duration,
    pinning: Pinning,
) -> Result<f64, BenchError> {
    in_client(client, dst, move || {
        if pinning == Pinning::Pinned {
            pin()?;
        }
        let start = Instant::now();
        let mut done = 0u64;
        while start.elapsed() < period {
            crr_once(dst, TIMEOUT)?;
            done += 1;
        }
        Ok(done as f64 / start.elapsed().as_secs_f64())
    })
}

/// One connection with one transaction from `client`: whether a path
/// answers yet.
pub fn probe(client: &Netns, dst: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    client.run(move || crr_once(dst, timeout))?
}

fn in_client<T: Send + 'static>(
    client: &Netns,
    dst: SocketAddr,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, BenchError> {
    let result = client
        .run(f)
        .map_err(|e| BenchError::Failed(format!("entering {}: {e}", client.name())))?;
    result.map_err(|source| BenchError::Io {
        what: format!("request/response to {dst}"),
        source,
    })
}

/// One connection with one transaction, closed with a reset so that a
/// run of tens of thousands leaves no TIME_WAIT behind to run out of
/// ports.
fn crr_once(dst: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&dst, timeout)?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(timeout))?;
    transact(&mut conn)?;
    setsockopt(
        &conn.as_fd(),
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .map_err(std::io::Error::from)
}

fn transact(conn: &mut TcpStream) -> std::io::Result<()> {
    let request = [b'x'; MESSAGE];
    let mut answer = [0u8; MESSAGE];
    conn.write_all(&request)?;
    conn.read_exact(&mut answer)
}

/// One UDP transaction: the request carries `sequence`, so a late echo of
/// an earlier, resent request is not taken for this one's. A lost datagram
/// is sent again after [`UDP_RETRY`]; the transaction fails after
/// [`TIMEOUT`].
fn udp_transact(socket: &UdpSocket, sequence: u64) -> std::io::Result<()> {
    let mut request = [b'x'; MESSAGE];
    request[..8].copy_from_slice(&sequence.to_le_bytes());
    let mut answer = [0u8; MESSAGE];
    let start = Instant::now();
    socket.send(&request)?;
    loop {
        match socket.recv(&mut answer) {
            Ok(n) if n == MESSAGE && answer[..8] == request[..8] => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if start.elapsed() >= TIMEOUT {
                    return Err(e);
                }
                socket.send(&request)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Pins the calling thread to [`CPU`].
fn pin() -> std::io::Result<()> {
    let mut set = CpuSet::new();
    set.set(CPU).map_err(std::io::Error::from)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_reports_percentiles_of_its_transactions() {
        let run = RrRun {
            rate: 4.0,
            latencies_us: vec![40.0, 10.0, 30.0, 20.0],
        };
        assert_eq!(run.percentile(50.0), 20.0);
        assert_eq!(run.percentile(99.0), 40.0);
    }

    #[test]
    fn pinned_and_unpinned_servers_have_their_own_ports() {
        assert_ne!(Pinning::Pinned.port(), Pinning::Unpinned.port());
    }
}
