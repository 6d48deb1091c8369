//! The Kubernetes API datastore (`--datastore kubernetes[:KUBECONFIG]`):
//! one kube-rs [`watcher`] per kind (Nodes, Namespaces, Pods,
//! NetworkPolicies, Services, EndpointSlices, all namespaces), translated
//! into [`Event`]s.
//!
//! - A (re)list (`Init`, `InitApply`.., `InitDone`) becomes one
//!   [`Event::ResyncKind`] for that kind; the watchers list independently,
//!   so a relist of pods must not touch nodes.
//! - `Apply` and `Delete` map one to one.
//! - Failed calls, dropped connections and `410 Gone` are the watcher's
//!   business: it re-watches from the last resource version or relists,
//!   paced by [`WatchStreamExt::default_backoff`]. Each error is logged and
//!   counted in `sluice_kube_watch_errors_total{kind}`; nothing here gives
//!   up while the receiver is alive.
//!
//! Malformed objects. A typed watcher (`Api<Pod>`) decodes a whole list
//! response at once, so one object it cannot decode fails the list, and the
//! watcher would relist and fail forever. So the watchers run on [`Raw`]
//! objects, which accept any JSON and read only the metadata the watcher
//! needs (name, namespace, resourceVersion); each object is decoded into
//! its k8s-openapi type afterwards, on its own. One that does not decode,
//! or that this agent's copy of the API server's validation rejects, is
//! logged, counted as `sluice_datastore_errors_total{reason="malformed"}`
//! and passed on as a [`Resource::Rejected`], in an update and in a relist
//! alike: it is not a delete, the last good version stays beside it, and a
//! rejected NetworkPolicy isolates what it could have selected. Only an
//! object without a name is skipped. A `Delete` needs only the name, so a
//! malformed object can still be deleted.

use std::borrow::Cow;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::path::PathBuf;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::cluster_state::Event;
use super::resource::{admit, Kind, ObjectKey, Rejected, Resource};
use crate::metrics::{reason, Metrics};

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("in-cluster Kubernetes configuration: {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("creating the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A client for the API server: with the pod's service account (in-cluster
/// environment and token) when `kubeconfig` is `None`, else with the
/// current context of that kubeconfig file. Explicit on purpose: an agent
/// on a node must not pick up whatever `~/.kube/config` root happens to have.
pub async fn client(kubeconfig: Option<PathBuf>) -> Result<Client, KubeSourceError> {
    let config = match kubeconfig {
        None => kube::Config::incluster().map_err(KubeSourceError::InCluster)?,
        Some(path) => {
            let error = |source| KubeSourceError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let file = Kubeconfig::read_from(&path).map_err(error)?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(error)?
        }
    };
    Client::try_from(config).map_err(KubeSourceError::Client)
}

pub struct KubeSource {
    client: Client,
    metrics: Metrics,
}

impl KubeSource {
    pub fn new(client: Client, metrics: Metrics) -> Self {
        KubeSource { client, metrics }
    }

    /// Watches every kind and sends their events until the receiver is
    /// dropped. Each kind starts with a [`Event::ResyncKind`] once its
    /// initial list is complete.
    pub async fn run(self, tx: mpsc::Sender<Event>) {
        let KubeSource { client, metrics } = self;
        tokio::join!(
            watch::<Node>(client.clone(), &metrics, &tx),
            watch::<Namespace>(client.clone(), &metrics, &tx),
            watch::<Pod>(client.clone(), &metrics, &tx),
            watch::<NetworkPolicy>(client.clone(), &metrics, &tx),
            watch::<Service>(client.clone(), &metrics, &tx),
            watch::<EndpointSlice>(client, &metrics, &tx),
        );
    }
}

/// What the agent may do with the API: `(apiGroup, resource, verb)` for
/// each kind it watches. kube-rs's watcher lists and watches; nothing
/// else is called (no get, no writes). The Helm chart's ClusterRole
/// grants exactly this, which a test checks.
pub fn permissions() -> std::collections::BTreeSet<(&'static str, &'static str, &'static str)> {
    fn of<K: Watched>() -> [(&'static str, &'static str, &'static str); 2] {
        [
            (K::GROUP, K::URL_PATH_SEGMENT, "list"),
            (K::GROUP, K::URL_PATH_SEGMENT, "watch"),
        ]
    }
    [
        of::<Node>(),
        of::<Namespace>(),
        of::<Pod>(),
        of::<NetworkPolicy>(),
        of::<Service>(),
        of::<EndpointSlice>(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The k8s-openapi types the agent watches, and how each becomes a
/// [`Resource`].
trait Watched: k8s_openapi::Resource + DeserializeOwned + Clone + Debug + Send + 'static {
    const WATCHED: Kind;
    fn into_resource(self: Box<Self>) -> Resource;
}

impl Watched for Node {
    const WATCHED: Kind = Kind::Node;
    fn into_resource(self: Box<Self>) -> Resource {
        Resource::Node(self)
    }
}

impl Watched for Namespace {
    const WATCHED: Kind = Kind::Namespace;
    fn into_resource(self: Box<Self>) -> Resource {
        Resource::Namespace(self)
    }
}

impl Watched for Pod {
    const WATCHED: Kind = Kind::Pod;
    fn into_resource(self: Box<Self>) -> Resource {
        Resource::Pod(self)
    }
}

impl Watched for NetworkPolicy {
    const WATCHED: Kind = Kind::NetworkPolicy;
    fn into_resource(self: Box<Self>) -> Resource {
        Resource::NetworkPolicy(self)
    }
}

impl Watched for Service {
    const WATCHED: Kind = Kind::Service;
    fn into_resource(self: Box<Self>) -> Resource {
        Resource::Service(self)
    }
}

impl Watched for EndpointSlice {
    const WATCHED: Kind = Kind::EndpointSlice;
    fn into_resource(self: Box<Self>) -> Resource {
        Resource::EndpointSlice(self)
    }
}

/// An object of kind `K` as the API server sent it, not yet decoded. Any
/// JSON deserializes into it, so one bad object cannot fail a whole list or
/// watch response; `metadata` holds just what could be read of name,
/// namespace, uid and resourceVersion.
#[derive(Clone, Debug)]
struct Raw<K> {
    metadata: ObjectMeta,
    value: Value,
    kind: PhantomData<fn() -> K>,
}

impl<'de, K> Deserialize<'de> for Raw<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        let field = |name: &str| {
            value
                .get("metadata")
                .and_then(|meta| meta.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let metadata = ObjectMeta {
            name: field("name"),
            namespace: field("namespace"),
            uid: field("uid"),
            resource_version: field("resourceVersion"),
            ..ObjectMeta::default()
        };
        Ok(Raw {
            metadata,
            value,
            kind: PhantomData,
        })
    }
}

/// `Raw<K>` is served by `K`'s API endpoints.
impl<K: k8s_openapi::Resource> kube::Resource for Raw<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        K::GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        K::VERSION.into()
    }

    fn api_version(_: &()) -> Cow<'_, str> {
        K::API_VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        K::URL_PATH_SEGMENT.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<K: Watched> Raw<K> {
    /// The object's key; `None` without a name (or, for namespaced kinds,
    /// a namespace), which the API server never sends.
    fn key(&self) -> Option<ObjectKey> {
        let name = self.metadata.name.clone().filter(|n| !n.is_empty())?;
        if !K::WATCHED.is_namespaced() {
            return Some(ObjectKey::cluster_scoped(K::WATCHED, name));
        }
        let namespace = self.metadata.namespace.clone().filter(|n| !n.is_empty())?;
        Some(ObjectKey::namespaced(K::WATCHED, namespace, name))
    }

    /// The object; [`Resource::Rejected`] if it does not decode or would
    /// not be admitted; `Err` if it has no key to be rejected under.
    fn decode(self) -> Result<Resource, String> {
        let Some(key) = self.key() else {
            return Err("metadata.name or metadata.namespace missing".into());
        };
        let Value::Object(mut map) = self.value else {
            return Err("not a JSON object".into());
        };
        // List responses leave apiVersion and kind out of their items; the
        // k8s-openapi types insist on them.
        map.insert("apiVersion".into(), K::API_VERSION.into());
        map.insert("kind".into(), K::KIND.into());
        let value = Value::Object(map);
        let object: K = match serde_path_to_error::deserialize(&value) {
            Ok(object) => object,
            Err(e) => {
                let path = e.path().to_string();
                let message = e.into_inner();
                let reason = if path == "." {
                    message.to_string()
                } else {
                    format!("{path}: {message}")
                };
                return Ok(Resource::Rejected(Box::new(Rejected::new(
                    &key,
                    vec![value],
                    reason,
                ))));
            }
        };
        Ok(admit(K::into_resource(Box::new(object)), || value))
    }
}

/// Runs the watcher for one kind until `tx` is closed.
async fn watch<K: Watched>(client: Client, metrics: &Metrics, tx: &mpsc::Sender<Event>) {
    let kind = K::WATCHED;
    let api: Api<Raw<K>> = Api::all(client);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    // Objects of a (re)list in progress.
    let mut listing: Vec<Resource> = Vec::new();
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = tx.closed() => return,
        };
        let event = match item {
            // The watcher's stream never ends; if it did, there is nothing
            // left to watch with.
            None => {
                warn!(%kind, "Kubernetes watch ended");
                return;
            }
            Some(Err(error)) => {
                warn!(%kind, %error, "Kubernetes watch failed; retrying");
                metrics
                    .kube_watch_errors
                    .with_label_values(&[kind.label()])
                    .inc();
                continue;
            }
            Some(Ok(watcher::Event::Init)) => {
                listing.clear();
                continue;
            }
            Some(Ok(watcher::Event::InitApply(raw))) => {
                if let Some(resource) = decode(raw, metrics) {
                    listing.push(resource);
                }
                continue;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                info!(%kind, objects = listing.len(), "listed from the Kubernetes API");
                Event::ResyncKind(kind, std::mem::take(&mut listing))
            }
            Some(Ok(watcher::Event::Apply(raw))) => match decode(raw, metrics) {
                Some(resource) => Event::Apply(resource),
                None => continue,
            },
            Some(Ok(watcher::Event::Delete(raw))) => match raw.key() {
                Some(key) => Event::Delete(key),
                None => {
                    warn!(%kind, "skipping deleted object without a name or namespace");
                    count_malformed(metrics);
                    continue;
                }
            },
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// The object (maybe rejected, then reported as malformed), or `None` if
/// it cannot even be named.
fn decode<K: Watched>(raw: Raw<K>, metrics: &Metrics) -> Option<Resource> {
    let name = raw.metadata.name.clone().unwrap_or_default();
    let namespace = raw.metadata.namespace.clone().unwrap_or_default();
    match raw.decode() {
        Ok(Resource::Rejected(rejected)) => {
            warn!(
                kind = %K::WATCHED, %namespace, %name, reason = %rejected.reason,
                "rejected object; its last good version stays and its policy fails closed"
            );
            count_malformed(metrics);
            Some(Resource::Rejected(rejected))
        }
        Ok(resource) => Some(resource),
        Err(error) => {
            warn!(kind = %K::WATCHED, %namespace, %name, %error, "skipping malformed object");
            count_malformed(metrics);
            None
        }
    }
}

fn count_malformed(metrics: &Metrics) {
    metrics
        .datastore_errors
        .with_label_values(&[reason::MALFORMED])
        .inc();
}

#[cfg(test)]
mod tests {
    //! The source against a mocked API server (`tower_test::mock`), driven
    //! one request at a time. The four watchers call concurrently, so the
    //! server hands out requests by kind and verb, not in arrival order.

    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::json;
    use tokio::task::JoinHandle;
    use tower_test::mock::{self, SendResponse};

    use super::*;
    use crate::datastore::fixtures::{self, ENDPOINT_SLICE, NAMESPACE, NODE, POD, POLICY, SERVICE};
    use crate::datastore::parse_json;

    #[test]
    fn permissions_cover_every_watched_kind_with_list_and_watch_only() {
        let permissions = permissions();
        assert_eq!(permissions.len(), 2 * Kind::ALL.len());
        assert!(permissions
            .iter()
            .all(|(_, _, verb)| *verb == "list" || *verb == "watch"));
        assert!(permissions.contains(&("discovery.k8s.io", "endpointslices", "watch")));
        assert!(permissions.contains(&("", "nodes", "list")));
    }

    /// Long enough for the watcher's first backoff (800 ms, jittered);
    /// only ever waited out when a test is about to fail.
    const TIMEOUT: Duration = Duration::from_secs(10);

    type Handle = mock::Handle<Request<Body>, Response<Body>>;
    type Responder = SendResponse<Response<Body>>;

    struct ApiServer {
        handle: Handle,
        /// Requests taken from the handle while looking for another.
        pending: Vec<(Request<Body>, Responder)>,
    }

    struct Harness {
        server: ApiServer,
        events: mpsc::Receiver<Event>,
        metrics: Metrics,
        source: JoinHandle<()>,
    }

    fn start() -> Harness {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let metrics = Metrics::new();
        let (tx, events) = mpsc::channel(16);
        let source = tokio::spawn(KubeSource::new(client, metrics.clone()).run(tx));
        Harness {
            server: ApiServer {
                handle,
                pending: Vec::new(),
            },
            events,
            metrics,
            source,
        }
    }

    fn path(kind: Kind) -> &'static str {
        match kind {
            Kind::Node => "/api/v1/nodes",
            Kind::Namespace => "/api/v1/namespaces",
            Kind::Pod => "/api/v1/pods",
            Kind::NetworkPolicy => "/apis/networking.k8s.io/v1/networkpolicies",
            Kind::Service => "/api/v1/services",
            Kind::EndpointSlice => "/apis/discovery.k8s.io/v1/endpointslices",
        }
    }

    fn query(request: &Request<Body>, name: &str) -> Option<String> {
        request
            .uri()
            .query()?
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_owned())
    }

    fn is_watch(request: &Request<Body>) -> bool {
        query(request, "watch").as_deref() == Some("true")
    }

    impl ApiServer {
        /// The next list (`watch == false`) or watch request for `kind`.
        async fn next(&mut self, kind: Kind, watch: bool) -> (Request<Body>, Responder) {
            let wanted = |request: &Request<Body>| {
                request.uri().path() == path(kind) && is_watch(request) == watch
            };
            if let Some(at) = self.pending.iter().position(|(r, _)| wanted(r)) {
                return self.pending.remove(at);
            }
            loop {
                let next = tokio::time::timeout(TIMEOUT, self.handle.next_request())
                    .await
                    .unwrap_or_else(|_| {
                        panic!("no {kind} {} request", if watch { "watch" } else { "list" })
                    })
                    .expect("the client is gone");
                assert_eq!(next.0.method(), http::Method::GET, "{}", next.0.uri());
                if wanted(&next.0) {
                    return next;
                }
                self.pending.push(next);
            }
        }

        /// Answers the next list of `kind` with `items` at `version`.
        async fn list(&mut self, kind: Kind, version: &str, items: Vec<Value>) {
            let (_, respond) = self.next(kind, false).await;
            let items: Vec<Value> = items.into_iter().map(list_item).collect();
            respond.send_response(json_response(
                StatusCode::OK,
                json!({
                    "apiVersion": kind_api_version(kind),
                    "kind": format!("{kind}List"),
                    "metadata": {"resourceVersion": version},
                    "items": items,
                }),
            ));
        }

        /// Takes the next watch of `kind`, checks it resumes from
        /// `version`, and answers with `events` (type, object); the
        /// response then ends, as when the API server closes a watch.
        async fn watch(&mut self, kind: Kind, version: &str, events: &[(&str, Value)]) {
            let (request, respond) = self.next(kind, true).await;
            assert_eq!(
                query(&request, "resourceVersion").as_deref(),
                Some(version),
                "{}",
                request.uri()
            );
            let mut body = Vec::new();
            for (kind, object) in events {
                serde_json::to_writer(&mut body, &json!({"type": kind, "object": object}))
                    .expect("JSON");
                body.push(b'\n');
            }
            respond.send_response(Response::new(Body::from(body)));
        }

        /// Answers every kind's initial list with nothing.
        async fn list_nothing(&mut self) {
            for kind in Kind::ALL {
                self.list(kind, "1", Vec::new()).await;
            }
        }
    }

    impl Harness {
        async fn next_event(&mut self) -> Event {
            tokio::time::timeout(TIMEOUT, self.events.recv())
                .await
                .expect("no event from the source")
                .expect("the source stopped")
        }

        /// The initial resync of every kind, in kind order.
        async fn resyncs(&mut self) -> Vec<(Kind, Vec<Resource>)> {
            let mut resyncs = Vec::new();
            for _ in Kind::ALL {
                match self.next_event().await {
                    Event::ResyncKind(kind, objects) => resyncs.push((kind, objects)),
                    other => panic!("expected a resync, got {other:?}"),
                }
            }
            resyncs.sort_by_key(|(kind, _)| *kind);
            resyncs
        }

        fn watch_errors(&self, kind: Kind) -> u64 {
            self.metrics
                .kube_watch_errors
                .with_label_values(&[kind.label()])
                .get()
        }

        fn malformed(&self) -> u64 {
            self.metrics
                .datastore_errors
                .with_label_values(&[reason::MALFORMED])
                .get()
        }

        /// Dropping the receiver stops the source.
        async fn stop(self) {
            drop(self.events);
            tokio::time::timeout(TIMEOUT, self.source)
                .await
                .expect("the source did not stop")
                .expect("the source panicked");
        }
    }

    fn kind_api_version(kind: Kind) -> &'static str {
        match kind {
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn json_response(status: StatusCode, value: Value) -> Response<Body> {
        let mut response = Response::new(Body::from(value.to_string().into_bytes()));
        *response.status_mut() = status;
        response
    }

    /// A fixture as the API server returns it, at resource version `rv`.
    fn object(yaml: &str, rv: &str) -> Value {
        let mut value: Value = serde_yaml::from_str(yaml).expect("fixture YAML");
        value["metadata"]["resourceVersion"] = rv.into();
        value
    }

    /// Items of a list response come without apiVersion and kind.
    fn list_item(mut value: Value) -> Value {
        let map = value.as_object_mut().expect("an object");
        map.remove("apiVersion");
        map.remove("kind");
        value
    }

    /// What the manifest parser makes of the same object.
    fn resource(value: &Value) -> Resource {
        let mut parsed = parse_json(&value.to_string());
        assert_eq!(parsed.len(), 1);
        parsed.remove(0).expect("fixture parses")
    }

    fn pod(name: &str, ip: &str, rv: &str) -> Value {
        object(&fixtures::pod("shop", name, ip), rv)
    }

    /// A pod whose containers are not a list.
    fn malformed_pod(name: &str, rv: &str) -> Value {
        let mut pod = pod(name, "10.244.1.66", rv);
        pod["spec"]["containers"] = "oops".into();
        pod
    }

    fn pod_key(name: &str) -> ObjectKey {
        ObjectKey::namespaced(Kind::Pod, "shop", name)
    }

    #[tokio::test]
    async fn clients_from_a_kubeconfig_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: lab\n\
             clusters: [{name: lab, cluster: {server: 'https://127.0.0.1:6443'}}]\n\
             users: [{name: agent, user: {token: secret}}]\n\
             contexts: [{name: lab, context: {cluster: lab, user: agent, namespace: kube-system}}]\n",
        )
        .expect("write kubeconfig");
        // Builds the TLS stack too, which needs its crypto provider.
        let client = client(Some(path)).await.expect("client");
        assert_eq!(client.default_namespace(), "kube-system");

        let missing = dir.path().join("missing");
        let error = client_error(Some(missing.clone())).await;
        assert!(
            matches!(error, KubeSourceError::Kubeconfig { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains(&*missing.to_string_lossy()),
            "{error}"
        );
    }

    async fn client_error(kubeconfig: Option<PathBuf>) -> KubeSourceError {
        match client(kubeconfig).await {
            Ok(_) => panic!("expected an error"),
            Err(error) => error,
        }
    }

    #[tokio::test]
    async fn initial_lists_become_one_resync_per_kind() {
        let mut h = start();
        let (node, namespace, policy) = (
            object(NODE, "3"),
            object(NAMESPACE, "4"),
            object(POLICY, "5"),
        );
        let pods = vec![object(POD, "6"), pod("db", "10.244.1.9", "7")];
        // Answered in another order than the source asked.
        h.server.list(Kind::Pod, "10", pods.clone()).await;
        h.server
            .list(Kind::NetworkPolicy, "10", vec![policy.clone()])
            .await;
        h.server
            .list(Kind::Namespace, "10", vec![namespace.clone()])
            .await;
        h.server.list(Kind::Node, "10", vec![node.clone()]).await;
        let service = object(SERVICE, "7");
        let slice = object(ENDPOINT_SLICE, "8");
        h.server
            .list(Kind::EndpointSlice, "10", vec![slice.clone()])
            .await;
        h.server
            .list(Kind::Service, "10", vec![service.clone()])
            .await;

        assert_eq!(
            h.resyncs().await,
            [
                (Kind::Node, vec![resource(&node)]),
                (Kind::Namespace, vec![resource(&namespace)]),
                (Kind::Pod, pods.iter().map(resource).collect()),
                (Kind::NetworkPolicy, vec![resource(&policy)]),
                (Kind::Service, vec![resource(&service)]),
                (Kind::EndpointSlice, vec![resource(&slice)]),
            ]
        );
        // Then each kind watches from where its list left off.
        for kind in Kind::ALL {
            let (request, _) = h.server.next(kind, true).await;
            assert_eq!(query(&request, "resourceVersion").as_deref(), Some("10"));
        }
        assert_eq!(h.malformed(), 0);
        h.stop().await;
    }

    #[tokio::test]
    async fn watch_events_become_apply_and_delete() {
        let mut h = start();
        h.server.list_nothing().await;
        h.resyncs().await;

        let added = pod("db", "10.244.1.9", "11");
        let moved = pod("db", "10.244.1.10", "12");
        let node = object(NODE, "13");
        h.server
            .watch(
                Kind::Pod,
                "1",
                &[
                    ("ADDED", added.clone()),
                    ("MODIFIED", moved.clone()),
                    ("DELETED", pod("db", "10.244.1.10", "14")),
                ],
            )
            .await;
        assert_eq!(h.next_event().await, Event::Apply(resource(&added)));
        assert_eq!(h.next_event().await, Event::Apply(resource(&moved)));
        assert_eq!(h.next_event().await, Event::Delete(pod_key("db")));

        h.server
            .watch(Kind::Node, "1", &[("ADDED", node.clone())])
            .await;
        assert_eq!(h.next_event().await, Event::Apply(resource(&node)));
        h.server.watch(Kind::Node, "13", &[("DELETED", node)]).await;
        assert_eq!(
            h.next_event().await,
            Event::Delete(ObjectKey::cluster_scoped(Kind::Node, "node-a"))
        );
        assert!(Kind::ALL.iter().all(|&kind| h.watch_errors(kind) == 0));
        h.stop().await;
    }

    #[tokio::test]
    async fn a_dropped_watch_is_resumed_where_it_left_off() {
        let mut h = start();
        h.server.list(Kind::Pod, "10", vec![object(POD, "9")]).await;
        for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Pod) {
            h.server.list(kind, "10", Vec::new()).await;
        }
        h.resyncs().await;

        // The connection ends without a word...
        h.server.watch(Kind::Pod, "10", &[]).await;
        // ...and the watcher watches again from the same version, with no
        // relist: the next event is the watch's, not a resync.
        let added = pod("db", "10.244.1.9", "11");
        h.server
            .watch(Kind::Pod, "10", &[("ADDED", added.clone())])
            .await;
        assert_eq!(h.next_event().await, Event::Apply(resource(&added)));
        // It ends again after an event: resumed from that event's version.
        let moved = pod("db", "10.244.1.10", "12");
        h.server
            .watch(Kind::Pod, "11", &[("MODIFIED", moved.clone())])
            .await;
        assert_eq!(h.next_event().await, Event::Apply(resource(&moved)));
        assert_eq!(h.watch_errors(Kind::Pod), 0);
        h.stop().await;
    }

    #[tokio::test]
    async fn gone_relists_and_resyncs_the_kind() {
        let mut h = start();
        let web = object(POD, "8");
        h.server
            .list(
                Kind::Pod,
                "10",
                vec![web.clone(), pod("db", "10.244.1.9", "9")],
            )
            .await;
        for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Pod) {
            h.server.list(kind, "10", Vec::new()).await;
        }
        h.resyncs().await;

        let gone = json!({
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": "too old resource version: 10 (20)",
            "reason": "Expired",
            "code": 410,
        });
        h.server.watch(Kind::Pod, "10", &[("ERROR", gone)]).await;
        // After the backoff: a fresh list, whose set replaces the pods.
        let cache = pod("cache", "10.244.1.12", "19");
        h.server
            .list(Kind::Pod, "20", vec![web.clone(), cache.clone()])
            .await;
        assert_eq!(
            h.next_event().await,
            Event::ResyncKind(Kind::Pod, vec![resource(&web), resource(&cache)])
        );
        assert_eq!(h.watch_errors(Kind::Pod), 1);
        assert_eq!(h.watch_errors(Kind::Node), 0);
        let (request, _) = h.server.next(Kind::Pod, true).await;
        assert_eq!(query(&request, "resourceVersion").as_deref(), Some("20"));
        h.stop().await;
    }

    #[tokio::test]
    async fn a_failed_list_is_retried() {
        let mut h = start();
        let (_, respond) = h.server.next(Kind::Namespace, false).await;
        respond.send_response(json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({
                "apiVersion": "v1",
                "kind": "Status",
                "metadata": {},
                "status": "Failure",
                "message": "etcd is having a bad day",
                "reason": "InternalError",
                "code": 500,
            }),
        ));
        // The other kinds are not held up.
        for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Namespace) {
            h.server.list(kind, "10", Vec::new()).await;
        }
        let namespace = object(NAMESPACE, "9");
        h.server
            .list(Kind::Namespace, "10", vec![namespace.clone()])
            .await;
        let resyncs = h.resyncs().await;
        assert_eq!(resyncs[1], (Kind::Namespace, vec![resource(&namespace)]));
        assert_eq!(h.watch_errors(Kind::Namespace), 1);
        h.stop().await;
    }

    fn rejected(value: &Value) -> Resource {
        let raw: Raw<Pod> = serde_json::from_value(value.clone()).unwrap();
        let decoded = raw.decode().unwrap();
        assert!(decoded.is_rejected(), "{decoded:?}");
        decoded
    }

    #[tokio::test]
    async fn malformed_objects_are_rejected_not_deleted_and_counted() {
        let mut h = start();
        let web = object(POD, "8");
        let db = pod("db", "10.244.1.9", "9");
        let mut nameless = pod("nameless", "10.244.1.67", "7");
        nameless["metadata"]
            .as_object_mut()
            .expect("metadata")
            .remove("name");
        h.server
            .list(
                Kind::Pod,
                "10",
                vec![web.clone(), malformed_pod("bad", "6"), nameless, db.clone()],
            )
            .await;
        for kind in Kind::ALL.into_iter().filter(|k| *k != Kind::Pod) {
            h.server.list(kind, "10", Vec::new()).await;
        }
        let resyncs = h.resyncs().await;
        // The nameless one cannot be anything; the bad one stays known
        // (a relist without it would delete its last good version).
        let bad = malformed_pod("bad", "6");
        assert_eq!(
            resyncs[2],
            (
                Kind::Pod,
                vec![resource(&web), rejected(&bad), resource(&db)]
            )
        );
        assert_eq!(h.malformed(), 2);

        // In a watch: the bad one is rejected (not deleted), the watch goes
        // on, and a malformed object can still be deleted (only its name
        // counts).
        let cache = pod("cache", "10.244.1.12", "12");
        h.server
            .watch(
                Kind::Pod,
                "10",
                &[
                    ("MODIFIED", malformed_pod("db", "11")),
                    ("ADDED", cache.clone()),
                    ("DELETED", malformed_pod("web-7d4b9c5f6-x2x9k", "13")),
                ],
            )
            .await;
        let db_rejected = rejected(&malformed_pod("db", "11"));
        assert_eq!(h.next_event().await, Event::Apply(db_rejected));
        assert_eq!(h.next_event().await, Event::Apply(resource(&cache)));
        assert_eq!(
            h.next_event().await,
            Event::Delete(pod_key("web-7d4b9c5f6-x2x9k"))
        );
        assert_eq!(h.malformed(), 3);
        assert_eq!(h.watch_errors(Kind::Pod), 0);
        h.stop().await;
    }
}
