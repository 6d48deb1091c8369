//! Answers `Request::Flows` on the local API: the recorded flows that
//! match, then either the end or, following, live ones until the client
//! goes. Each answer runs in a task of its own, so a follower never holds
//! the main loop; one that reads too slowly misses flows (counted in its
//! log) rather than growing the agent's memory, and one that stops reading
//! altogether is dropped after the API's write deadline.
//!
//! The unix socket and not the HTTP metrics endpoint: flows tell who talks
//! to whom, which the socket (mode 0600, root on the node) keeps from the
//! pods that can reach the metrics port.

use std::{sync::Arc, time::Duration};

use sluice_common::{
    api::Response,
    observe::{Flow, FlowFilter},
};
use tokio::{
    io::{AsyncWriteExt as _, Interest},
    net::unix::OwnedWriteHalf,
    sync::broadcast::error::RecvError,
};
use tracing::debug;

use super::FlowHub;
use crate::cni_api::Responder;

/// How long one line may take to write before the client is dropped.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Starts answering one `Flows` request.
pub fn spawn(hub: &FlowHub, filter: FlowFilter, follow: bool, responder: Responder) {
    // Subscribed before the history is read: no flow falls between.
    let follower = follow.then(|| hub.follow());
    let (recorded, total) = hub.recorded(&filter);
    let mut out = responder.into_writer();
    tokio::spawn(async move {
        for flow in recorded {
            if send_flow(&mut out, &flow).await.is_err() {
                return;
            }
        }
        // The end of the recorded ones, also when live ones follow: the
        // client knows the history is complete (to merge nodes' in order).
        if send(&mut out, &Response::FlowsEnd { recorded: total })
            .await
            .is_err()
        {
            return;
        }
        let Some(mut follower) = follower else {
            return;
        };
        loop {
            tokio::select! {
                flow = follower.live.recv() => match flow {
                    Ok(flow) if filter.matches(&flow) => {
                        if send_flow(&mut out, &flow).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        debug!(missed, "a flow follower fell behind; it missed flows");
                    }
                    Err(RecvError::Closed) => return,
                },
                () = client_gone(&out) => return,
            }
        }
    });
}

async fn send_flow(out: &mut OwnedWriteHalf, flow: &Arc<Flow>) -> Result<(), ()> {
    send(
        out,
        &Response::Flow {
            flow: Box::new(Flow::clone(flow)),
        },
    )
    .await
}

async fn send(out: &mut OwnedWriteHalf, response: &Response) -> Result<(), ()> {
    let line = response.to_line();
    match tokio::time::timeout(WRITE_DEADLINE, out.write_all(line.as_bytes())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            debug!(%error, "a flow client went");
            Err(())
        }
        Err(_) => {
            debug!("a flow client stopped reading; dropped");
            Err(())
        }
    }
}

/// Returns once the client has closed its end (it sends nothing after its
/// request; what it does send is ignored).
async fn client_gone(out: &OwnedWriteHalf) {
    let stream = out.as_ref();
    let mut buf = [0u8; 256];
    loop {
        if stream.ready(Interest::READABLE).await.is_err() {
            return;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
    }
}
