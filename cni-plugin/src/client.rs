//! The agent client: one request, one response, one connection
//! (`sluice_common::api`).
//!
//! [`Agent`] is the transport; its provided methods turn each exchange into
//! the one answer the operation allows, so the commands can be tested with an
//! in-memory fake.

use std::{
    io::{self, BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use sluice_common::api::{
    AgentStatus, Allocation, Attachment, EndpointSpec, EndpointState, Request, Response,
};

use crate::error::Error;

/// How long one exchange may take. Register makes the agent attach eBPF
/// programs and add routes, which takes milliseconds; anything near this
/// limit means the agent is stuck, and the runtime should retry later.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// Longest response line accepted: a GC answer lists released attachments,
/// which stays far below this even for a full node.
const MAX_RESPONSE: u64 = 16 << 20;

pub trait Agent {
    /// Sends one request and returns the agent's response, whatever it is.
    fn exchange(&self, request: &Request) -> Result<Response, Error>;

    fn allocate(&self, attachment: &Attachment) -> Result<Allocation, Error> {
        let request = Request::Allocate {
            attachment: attachment.clone(),
        };
        match self.exchange(&request)? {
            Response::Allocated { allocation } => Ok(allocation),
            other => Err(unexpected("allocate an address", other)),
        }
    }

    fn register(&self, endpoint: &EndpointSpec) -> Result<(), Error> {
        let request = Request::Register {
            endpoint: endpoint.clone(),
        };
        match self.exchange(&request)? {
            Response::Ok => Ok(()),
            other => Err(unexpected("register the endpoint", other)),
        }
    }

    fn release(&self, attachment: &Attachment) -> Result<(), Error> {
        let request = Request::Release {
            attachment: attachment.clone(),
        };
        match self.exchange(&request)? {
            Response::Ok => Ok(()),
            other => Err(unexpected("release the attachment", other)),
        }
    }

    fn get(&self, attachment: &Attachment) -> Result<EndpointState, Error> {
        let request = Request::Get {
            attachment: attachment.clone(),
        };
        match self.exchange(&request)? {
            Response::Endpoint { state } => Ok(state),
            other => Err(unexpected("look the attachment up", other)),
        }
    }

    fn gc(&self, valid: Vec<Attachment>) -> Result<Vec<Attachment>, Error> {
        match self.exchange(&Request::Gc { valid })? {
            Response::Collected { released } => Ok(released),
            other => Err(unexpected("collect garbage", other)),
        }
    }

    fn status(&self) -> Result<AgentStatus, Error> {
        match self.exchange(&Request::Status)? {
            Response::Status { status } => Ok(status),
            other => Err(unexpected("report status", other)),
        }
    }
}

/// An agent error answer becomes [`Error::Agent`]; any other answer that is
/// not the expected one is a protocol error.
fn unexpected(op: &'static str, response: Response) -> Error {
    match response {
        Response::Error { kind, message } => Error::Agent { op, kind, message },
        other => Error::AgentProtocol {
            op,
            detail: format!("{other:?}"),
        },
    }
}

/// The agent behind its unix socket.
#[derive(Clone, Debug)]
pub struct UnixAgent {
    socket: PathBuf,
    timeout: Duration,
}

impl UnixAgent {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self::with_timeout(socket, DEFAULT_TIMEOUT)
    }

    pub fn with_timeout(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        UnixAgent {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn no_answer(&self, source: io::Error) -> Error {
        Error::AgentNoAnswer {
            socket: self.socket.clone(),
            source,
        }
    }
}

impl Agent for UnixAgent {
    fn exchange(&self, request: &Request) -> Result<Response, Error> {
        // connect(2) on a unix socket does not wait for the peer to accept,
        // so it needs no timeout of its own: it fails at once when the
        // socket file is missing or nobody listens (the agent is down).
        let stream =
            UnixStream::connect(&self.socket).map_err(|source| Error::AgentUnreachable {
                socket: self.socket.clone(),
                source,
            })?;
        let set_timeouts = stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)));
        set_timeouts.map_err(|e| Error::io("setting agent socket timeouts", e))?;

        (&stream)
            .write_all(request.to_line().as_bytes())
            .and_then(|()| (&stream).flush())
            .map_err(|e| self.no_answer(e))?;

        let mut line = String::new();
        let mut reader = BufReader::new(io::Read::take(&stream, MAX_RESPONSE));
        let read = reader.read_line(&mut line).map_err(|e| {
            // A read timeout shows up as WouldBlock on Linux; say what it is.
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                self.no_answer(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no response within {:?}", self.timeout),
                ))
            } else {
                self.no_answer(e)
            }
        })?;
        if read == 0 || !line.ends_with('\n') {
            return Err(self.no_answer(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a complete response",
            )));
        }
        serde_json::from_str(line.trim_end()).map_err(|e| Error::AgentProtocol {
            op: "answer",
            detail: format!("undecodable response {:?}: {e}", line.trim_end()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use sluice_common::api::ErrorKind;
    use std::{os::unix::net::UnixListener, thread};

    /// A one-shot agent on a socket in a fresh temp dir, answering `reply`.
    fn serve_once(reply: Option<&'static str>) -> (PathBuf, thread::JoinHandle<String>) {
        let dir = std::env::temp_dir().join(format!(
            "sluice-cni-client-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).expect("read");
            if let Some(reply) = reply {
                (&stream).write_all(reply.as_bytes()).expect("write");
            }
            let _ = std::fs::remove_dir_all(&dir);
            line
        });
        (path, handle)
    }

    fn attachment() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn one_line_each_way() {
        let (path, server) = serve_once(Some("{\"result\":\"ok\"}\n"));
        UnixAgent::new(&path)
            .release(&attachment())
            .expect("release ok");
        let sent = server.join().expect("server");
        assert_eq!(
            sent,
            Request::Release {
                attachment: attachment()
            }
            .to_line()
        );
    }

    #[test]
    fn agent_errors_keep_their_kind() {
        let (path, server) = serve_once(Some(
            "{\"result\":\"error\",\"kind\":\"exhausted\",\"message\":\"full\"}\n",
        ));
        let err = UnixAgent::new(&path)
            .allocate(&attachment())
            .expect_err("exhausted");
        server.join().expect("server");
        assert!(
            matches!(
                err,
                Error::Agent {
                    kind: ErrorKind::Exhausted,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.code(), code::ADDRESS_EXHAUSTED);
    }

    #[test]
    fn wrong_answer_is_a_protocol_error() {
        let (path, server) = serve_once(Some("{\"result\":\"ok\"}\n"));
        let err = UnixAgent::new(&path)
            .status()
            .expect_err("ok is not a status");
        server.join().expect("server");
        assert_eq!(err.code(), code::AGENT_PROTOCOL);
    }

    #[test]
    fn missing_socket_means_try_again_later() {
        let err = UnixAgent::new("/nonexistent/sluice-cni-test.sock")
            .status()
            .expect_err("no agent");
        assert_eq!(err.code(), code::TRY_AGAIN_LATER);
    }

    #[test]
    fn silence_times_out_as_try_again_later() {
        let dir =
            std::env::temp_dir().join(format!("sluice-cni-client-silent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("agent.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            // Hold the connection open without answering until the client
            // has given up (it closes its end, which ends this read).
            let mut sink = Vec::new();
            let _ = io::Read::read_to_end(&mut &stream, &mut sink);
        });
        let err = UnixAgent::with_timeout(&path, Duration::from_millis(200))
            .status()
            .expect_err("timeout");
        server.join().expect("server");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(err.code(), code::TRY_AGAIN_LATER);
        assert!(
            err.details().contains("no response within"),
            "{}",
            err.details()
        );
    }

    #[test]
    fn hang_up_without_answer_means_try_again_later() {
        let (path, server) = serve_once(None);
        let err = UnixAgent::with_timeout(&path, Duration::from_secs(5))
            .status()
            .expect_err("no answer");
        server.join().expect("server");
        assert_eq!(err.code(), code::TRY_AGAIN_LATER);
    }
}
