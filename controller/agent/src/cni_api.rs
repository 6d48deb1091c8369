//! The agent's local API on a unix socket (mode 0600): one JSON request
//! line in, one JSON response line out.
//!
//! Requests are served one at a time. Each is small and fast (a map write,
//! a netlink call), and serialising them keeps IPAM and the endpoint
//! registry free of interleavings; a per-connection deadline stops a stuck
//! client from holding the agent.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use sluice_common::api::{ErrorKind, NodeReport, Request, Response};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use crate::{
    endpoints::{Agent, Datapath},
    prefilter::Prefilter,
};

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

/// Answers one API connection, within the per-connection deadline.
/// `report` gives a `Status` answer its node part, which is the main
/// loop's to know (readiness, the reconciler's view); `prefilter`
/// answers `Prefilter` requests.
pub async fn serve_connection<D: Datapath>(
    stream: UnixStream,
    agent: &mut Agent<D>,
    report: &dyn Fn() -> NodeReport,
    prefilter: &mut Prefilter,
) {
    if tokio::time::timeout(DEADLINE, serve_one(stream, agent, report, prefilter))
        .await
        .is_err()
    {
        warn!("API client timed out");
    }
}

async fn serve_one<D: Datapath>(
    stream: UnixStream,
    agent: &mut Agent<D>,
    report: &dyn Fn() -> NodeReport,
    prefilter: &mut Prefilter,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let mut line = String::new();
    let response = match reader.read_line(&mut line).await {
        Ok(0) => return,
        Ok(_) if !line.ends_with('\n') => Response::Error {
            kind: ErrorKind::Invalid,
            message: format!("request longer than {MAX_REQUEST} bytes or not newline-terminated"),
        },
        Ok(_) => match serde_json::from_str::<Request>(line.trim_end()) {
            Ok(Request::Prefilter { prefilter: op }) => {
                debug!(?op, "API request: prefilter");
                prefilter.handle(&op)
            }
            Ok(request) => {
                debug!(?request, "API request");
                let mut response = agent.handle(request).await;
                if let Response::Status { status } = &mut response {
                    status.node = report();
                }
                response
            }
            Err(e) => Response::Error {
                kind: ErrorKind::Invalid,
                message: format!("undecodable request: {e}"),
            },
        },
        Err(e) => Response::Error {
            kind: ErrorKind::Invalid,
            message: format!("reading request: {e}"),
        },
    };
    if let Err(e) = write.write_all(response.to_line().as_bytes()).await {
        warn!(error = %e, "writing an API response");
    }
}
