//! The agent's local API on a unix socket (mode 0600): one JSON request
//! line in, one JSON response line out.
//!
//! Requests are served one at a time. Each is small and fast (a map write,
//! a netlink call), and serialising them keeps IPAM and the endpoint
//! registry free of interleavings; a per-connection deadline stops a stuck
//! client from holding the agent. Only the answer to a registration may
//! wait (for the endpoint's policy, see `registration`), and it waits
//! without holding anyone else.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use sluice_common::api::{ErrorKind, Request, Response};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{unix::OwnedWriteHalf, UnixListener, UnixStream},
};
use tracing::{debug, warn};

const MAX_REQUEST: u64 = 64 * 1024;
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("another agent already serves {0}")]
    InUse(PathBuf),
    #[error("socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the socket, replacing a stale file from a dead agent but never a
/// live agent's socket.
pub async fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let io = |source| ServerError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

/// Where the answer to a request goes: the connection's write half. A
/// request may be answered later than it was read (CNI ADD waits for the
/// endpoint's policy), so the two are apart.
pub struct Responder {
    write: OwnedWriteHalf,
}

impl Responder {
    /// Sends the answer, within the per-connection deadline.
    pub async fn send(mut self, response: &Response) {
        let line = response.to_line();
        match tokio::time::timeout(DEADLINE, self.write.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "writing an API response"),
            Err(_) => warn!("API client timed out reading its answer"),
        }
    }
}

impl Responder {
    /// The connection's write half, for an answer of many lines (flows).
    pub fn into_writer(self) -> OwnedWriteHalf {
        self.write
    }
}

/// Reads one request from an API connection, within the per-connection
/// deadline: the request, or the error answer to send when it is not one;
/// `None` when the client went without asking.
pub async fn read_request(stream: UnixStream) -> Option<(Result<Request, Response>, Responder)> {
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let mut line = String::new();
    let read = tokio::time::timeout(DEADLINE, reader.read_line(&mut line)).await;
    let request = match read {
        Err(_) => {
            warn!("API client timed out");
            return None;
        }
        Ok(Ok(0)) => return None,
        Ok(Ok(_)) if !line.ends_with('\n') => Err(Response::Error {
            kind: ErrorKind::Invalid,
            message: format!("request longer than {MAX_REQUEST} bytes or not newline-terminated"),
        }),
        Ok(Ok(_)) => {
            serde_json::from_str::<Request>(line.trim_end()).map_err(|e| Response::Error {
                kind: ErrorKind::Invalid,
                message: format!("undecodable request: {e}"),
            })
        }
        Ok(Err(e)) => Err(Response::Error {
            kind: ErrorKind::Invalid,
            message: format!("reading request: {e}"),
        }),
    };
    if let Ok(request) = &request {
        debug!(?request, "API request");
    }
    Some((request, Responder { write }))
}
