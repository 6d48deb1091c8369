//! The agent client: one request, one response, one connection
//! (`sluice_common::api`).
//!
//! [`Agent`] is the transport; its provided methods turn each exchange into
//! the one answer the operation allows, so the commands can be tested with an
//! in-memory fake.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use sluice_common::api::{
    self, AgentStatus, Allocation, Attachment, CallError, EndpointSpec, EndpointState, Request,
    Response,
};

use crate::error::Error;

/// How long one exchange may take. Register makes the agent attach eBPF
/// programs and add routes, which takes milliseconds; anything near this
/// limit means the agent is stuck, and the runtime should retry later.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

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
        api::call(&self.socket, request, self.timeout).map_err(|e| match e {
            CallError::Unreachable(source) => Error::AgentUnreachable {
                socket: self.socket.clone(),
                source,
            },
            CallError::Io(source) => self.no_answer(source),
            CallError::Decode(e) => Error::AgentProtocol {
                op: "answer",
                detail: format!("undecodable response: {e}"),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use sluice_common::api::ErrorKind;
    use std::io::{BufRead as _, BufReader, Write as _};
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
