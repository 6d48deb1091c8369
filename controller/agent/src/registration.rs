//! CNI ADD's last step, in an order that never leaves a pod open: the
//! endpoint is admitted (recorded, and counted among the local endpoints),
//! its policy written (isolated in both directions while its Pod is
//! unknown), and only then made reachable. The answer waits until the
//! Pod's own policy is in the maps; a Pod the agent cannot identify within
//! the bound fails the ADD, and kubelet retries it.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use sluice_common::api::{Attachment, EndpointSpec, ErrorKind, Response};
use tracing::{info, warn};

use crate::{
    cni_api::Responder,
    endpoints::{Agent, Datapath},
    metrics::Metrics,
    reconcile::Reconciler,
};

/// A registration answered once its policy is in.
struct Waiting {
    attachment: Attachment,
    ip: Ipv4Addr,
    pod: String,
    responder: Responder,
    since: Instant,
    deadline: Instant,
}

pub struct Registrations {
    waiting: Vec<Waiting>,
    /// How long a Pod may stay unknown before its ADD fails.
    timeout: Duration,
    metrics: Metrics,
}

fn error(kind: ErrorKind, message: String) -> Response {
    Response::Error { kind, message }
}

impl Registrations {
    pub fn new(timeout: Duration, metrics: Metrics) -> Self {
        Self {
            waiting: Vec::new(),
            timeout,
            metrics,
        }
    }

    /// Registers `endpoint` and answers now, or once its policy is in.
    pub async fn register<D: Datapath>(
        &mut self,
        endpoint: EndpointSpec,
        responder: Responder,
        agent: &mut Agent<D>,
        reconciler: &mut Reconciler,
    ) {
        let since = Instant::now();
        let IpAddr::V4(ip) = endpoint.ip else {
            return responder
                .send(&error(
                    ErrorKind::Invalid,
                    format!("{}: only IPv4 endpoints are supported", endpoint.ip),
                ))
                .await;
        };
        let pod = match (&endpoint.pod, reconciler.identifies_endpoints()) {
            (Some(pod), _) => format!("{}/{}", pod.namespace, pod.name),
            (None, false) => String::new(),
            (None, true) => {
                return responder
                    .send(&error(
                        ErrorKind::Invalid,
                        "CNI_ARGS name no Pod (K8S_POD_NAMESPACE, K8S_POD_NAME): the agent enforces policy by Pod, so it wires only pods it can name".into(),
                    ))
                    .await;
            }
        };
        let attachment = endpoint.attachment.clone();
        if let Err(refused) = agent.admit(endpoint).await {
            return responder.send(&refused).await;
        }
        // Isolated (or its policy in) before it is reachable. Policy that
        // cannot be written leaves the pod unwired: nothing fails open.
        reconciler
            .set_local_endpoints(agent.local_endpoints(), agent.local_pods())
            .await;
        if !reconciler.policy_written() {
            agent.abandon(&attachment).await;
            reconciler
                .set_local_endpoints(agent.local_endpoints(), agent.local_pods())
                .await;
            return responder
                .send(&error(
                    ErrorKind::Internal,
                    "the policy maps cannot be written yet (the agent is starting, or a sync fails); retry".into(),
                ))
                .await;
        }
        let activated = agent.activate(&attachment).await;
        if activated != Response::Ok {
            reconciler
                .set_local_endpoints(agent.local_endpoints(), agent.local_pods())
                .await;
            return responder.send(&activated).await;
        }
        self.waiting.push(Waiting {
            attachment,
            ip,
            pod,
            responder,
            since,
            deadline: since + self.timeout,
        });
        self.answer_ready(agent, reconciler).await;
    }

    /// Answers the registrations whose policy is in, whose time is up (the
    /// endpoint is then unwired again), or whose endpoint went meanwhile.
    pub async fn answer_ready<D: Datapath>(
        &mut self,
        agent: &mut Agent<D>,
        reconciler: &mut Reconciler,
    ) {
        if self.waiting.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut abandoned = false;
        let (done, still): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| {
                !agent.is_registered(&w.attachment)
                    || reconciler.endpoint_ready(w.ip)
                    || now >= w.deadline
            });
        self.waiting = still;
        for w in done {
            let waited = w.since.elapsed();
            let response = if !agent.is_registered(&w.attachment) {
                error(
                    ErrorKind::NotFound,
                    format!("{} was released while its ADD waited", w.attachment),
                )
            } else if reconciler.endpoint_ready(w.ip) {
                self.metrics
                    .policy_wait
                    .with_label_values(&["ready"])
                    .observe(waited.as_secs_f64());
                info!(attachment = %w.attachment, pod = %w.pod, ms = waited.as_millis() as u64, "endpoint policy in place");
                Response::Ok
            } else {
                self.metrics
                    .policy_wait
                    .with_label_values(&["unidentified"])
                    .observe(waited.as_secs_f64());
                warn!(attachment = %w.attachment, pod = %w.pod, "no Pod object for the endpoint in time; unwiring it");
                agent.abandon(&w.attachment).await;
                abandoned = true;
                error(
                    ErrorKind::Unidentified,
                    format!(
                        "Pod {} unknown to the agent after {} s (is it visible in the agent's datastore?); its policy cannot be enforced, so it is not wired",
                        w.pod,
                        self.timeout.as_secs()
                    ),
                )
            };
            w.responder.send(&response).await;
        }
        if abandoned {
            reconciler
                .set_local_endpoints(agent.local_endpoints(), agent.local_pods())
                .await;
        }
    }

    /// When the earliest waiting registration gives up.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.iter().map(|w| w.deadline).min()
    }
}
