//! TCP and UDP echo servers and probes inside network namespaces.
//!
//! A socket belongs to the namespace it was created in, so servers and
//! clients are opened on a thread inside the namespace and then used from
//! ordinary threads.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use super::netns::Netns;

const POLL: Duration = Duration::from_millis(20);

/// An echo server on TCP and UDP at the same address; stops on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    pub fn start(ns: &Netns, addr: SocketAddr) -> std::io::Result<Self> {
        let (tcp, udp) = ns.run(move || bind(addr))??;
        Self::serve(tcp, udp)
    }

    /// Serves in the caller's own network namespace (the lab's pod server
    /// process runs inside the pod's).
    pub fn listen(addr: SocketAddr) -> std::io::Result<Self> {
        let (tcp, udp) = bind(addr)?;
        Self::serve(tcp, udp)
    }

    fn serve(tcp: TcpListener, udp: UdpSocket) -> std::io::Result<Self> {
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_stop = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            while !tcp_stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut conn, _)) => {
                        std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                            let mut buf = [0u8; 64 * 1024];
                            while let Ok(n) = conn.read(&mut buf) {
                                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(POLL),
                }
            }
        });
        let udp_stop = stop.clone();
        let udp_thread = std::thread::spawn(move || {
            // Any datagram whole, fragmented ones too.
            let mut buf = vec![0u8; MAX_DATAGRAM];
            while !udp_stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], peer);
                }
            }
        });
        Ok(Self {
            stop,
            threads: vec![tcp_thread, udp_thread],
        })
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, UdpSocket)> {
    Ok((TcpListener::bind(addr)?, UdpSocket::bind(addr)?))
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from inside `ns` and checks the echo.
pub fn tcp(ns: &Netns, dst: SocketAddr, timeout: Duration) -> bool {
    ns.run(move || -> bool {
        let Ok(mut conn) = TcpStream::connect_timeout(&dst, timeout) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(timeout));
        let msg = b"sluice-probe\n";
        let mut buf = [0u8; 13];
        conn.write_all(msg).is_ok() && conn.read_exact(&mut buf).is_ok() && &buf == msg
    })
    .unwrap_or(false)
}

/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65507;

/// Sends a datagram from inside `ns` and waits for the echo.
pub fn udp(ns: &Netns, dst: SocketAddr, timeout: Duration) -> bool {
    udp_sized(ns, dst, b"sluice-probe".len(), timeout)
}

/// [`udp`] with a datagram of `len` bytes (at most 65,507): beyond the
/// path MTU the sender's kernel fragments it, and only the whole datagram,
/// echoed byte for byte, counts.
pub fn udp_sized(ns: &Netns, dst: SocketAddr, len: usize, timeout: Duration) -> bool {
    let msg: Vec<u8> = b"sluice-probe".iter().copied().cycle().take(len).collect();
    ns.run(move || -> bool {
        let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(timeout));
        let mut buf = vec![0u8; MAX_DATAGRAM];
        sock.send_to(&msg, dst).is_ok()
            && matches!(sock.recv_from(&mut buf), Ok((n, from)) if from == dst && buf[..n] == msg[..])
    })
    .unwrap_or(false)
}

/// One ICMP echo with the system `ping`, from inside `ns`.
pub fn icmp(ns: &Netns, dst: std::net::IpAddr, timeout: Duration) -> bool {
    let secs = timeout.as_secs().max(1).to_string();
    ns.command("ping")
        .and_then(|mut c| {
            c.args(["-c", "1", "-W", &secs, "-q", &dst.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
        })
        .is_ok_and(|s| s.success())
}
