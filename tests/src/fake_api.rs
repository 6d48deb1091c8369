//! A fake Kubernetes API server for end-to-end tests of the agent's
//! `--datastore kubernetes` path: list and watch, as the API server serves
//! them to kube-rs watchers, of the six kinds the agent reads, from objects
//! a test sets. Resource versions are one counter for everything, as etcd's
//! revision; watches replay what came after their version and then follow,
//! with bookmarks when asked; `compact` makes older versions expire (a
//! watch from one gets `410 Gone`, as after etcd compaction); and
//! `drop_watches` cuts every open watch, as a restarting API server or a
//! load balancer does. Plain HTTP/1.1, one thread per connection.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// A kind the agent watches: its collection path, list kind and apiVersion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiKind {
    pub path: &'static str,
    pub kind: &'static str,
    pub api_version: &'static str,
}

pub const KINDS: [ApiKind; 6] = [
    ApiKind {
        path: "/api/v1/nodes",
        kind: "Node",
        api_version: "v1",
    },
    ApiKind {
        path: "/api/v1/namespaces",
        kind: "Namespace",
        api_version: "v1",
    },
    ApiKind {
        path: "/api/v1/pods",
        kind: "Pod",
        api_version: "v1",
    },
    ApiKind {
        path: "/api/v1/services",
        kind: "Service",
        api_version: "v1",
    },
    ApiKind {
        path: "/apis/networking.k8s.io/v1/networkpolicies",
        kind: "NetworkPolicy",
        api_version: "networking.k8s.io/v1",
    },
    ApiKind {
        path: "/apis/discovery.k8s.io/v1/endpointslices",
        kind: "EndpointSlice",
        api_version: "discovery.k8s.io/v1",
    },
];

fn kind_of(name: &str) -> Option<ApiKind> {
    KINDS.into_iter().find(|k| k.kind == name)
}

#[derive(Default)]
struct Store {
    revision: u64,
    /// Versions at or below this are gone from the history.
    compacted: u64,
    /// kind → (namespace, name) → object.
    objects: BTreeMap<&'static str, BTreeMap<(String, String), Value>>,
    /// (revision, kind, event type, object).
    history: Vec<(u64, &'static str, &'static str, Value)>,
    /// Bumped by `drop_watches`: watches opened before end.
    watch_generation: u64,
}

struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
    stop: AtomicBool,
}

pub struct FakeApi {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeApi {
    /// Serves on `listener` (bound by the caller, e.g. inside a network
    /// namespace) until dropped.
    pub fn serve(listener: TcpListener) -> std::io::Result<Self> {
        let address = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        let accept = std::thread::spawn(move || {
            while !accepting.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let shared = accepting.clone();
                        std::thread::spawn(move || {
                            let _ = handle(stream, &shared);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(Self {
            address,
            shared,
            accept: Some(accept),
        })
    }

    /// A kubeconfig file's text pointing at this server (plain HTTP).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{}\"}}\nusers:\n- name: fake\n  user: {{token: fake}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\ncurrent-context: fake\n",
            self.address
        )
    }

    /// Creates or replaces an object (its `kind` names the collection);
    /// returns its new resource version.
    pub fn apply(&self, mut object: Value) -> u64 {
        let kind = object["kind"]
            .as_str()
            .and_then(kind_of)
            .unwrap_or_else(|| panic!("fake API: unsupported object {object}"));
        let key = key_of(&object);
        let mut store = self.lock();
        store.revision += 1;
        let revision = store.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        let previous = store
            .objects
            .entry(kind.kind)
            .or_default()
            .insert(key, object.clone());
        let event = if previous.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store.history.push((revision, kind.kind, event, object));
        drop(store);
        self.shared.changed.notify_all();
        revision
    }

    /// Deletes an object if it exists.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let kind = kind_of(kind).unwrap_or_else(|| panic!("fake API: unsupported kind {kind}"));
        let mut store = self.lock();
        let Some(mut object) = store
            .objects
            .entry(kind.kind)
            .or_default()
            .remove(&(namespace.to_owned(), name.to_owned()))
        else {
            return;
        };
        store.revision += 1;
        let revision = store.revision;
        object["metadata"]["resourceVersion"] = json!(revision.to_string());
        store.history.push((revision, kind.kind, "DELETED", object));
        drop(store);
        self.shared.changed.notify_all();
    }

    /// Every object of a kind: (namespace, name) pairs.
    pub fn keys(&self, kind: &str) -> Vec<(String, String)> {
        self.lock()
            .objects
            .get(kind)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets the history: watches from any version handed out so far
    /// (bookmarks included) get 410 Gone and must list again.
    pub fn compact(&self) {
        let mut store = self.lock();
        store.revision += 1;
        store.compacted = store.revision;
        store.history.clear();
    }

    /// Cuts every open watch connection.
    pub fn drop_watches(&self) {
        self.lock().watch_generation += 1;
        self.shared.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.drop_watches();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// One request: the path, and the query's parameters.
struct Request {
    path: String,
    query: BTreeMap<String, String>,
}

fn read_request(stream: &TcpStream) -> std::io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    // Headers: nothing here needs them.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok(Request {
        path: path.to_owned(),
        query,
    })
}

fn handle(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let request = read_request(&stream)?;
    let Some(kind) = KINDS.into_iter().find(|k| k.path == request.path) else {
        let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}).to_string();
        return respond(&mut stream, "404 Not Found", &body);
    };
    let watch = matches!(
        request.query.get("watch").map(String::as_str),
        Some("true" | "1")
    );
    if !watch {
        let store = shared
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let items: Vec<Value> = store
            .objects
            .get(kind.kind)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let body = json!({
            "kind": format!("{}List", kind.kind),
            "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": store.revision.to_string()},
            "items": items,
        })
        .to_string();
        drop(store);
        return respond(&mut stream, "200 OK", &body);
    }
    watch_stream(stream, shared, kind, &request)
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A chunk of a chunked body: one watch event line.
fn send_event(stream: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut line = event.to_string();
    line.push('\n');
    write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
    stream.flush()
}

fn watch_stream(
    mut stream: TcpStream,
    shared: &Shared,
    kind: ApiKind,
    request: &Request,
) -> std::io::Result<()> {
    let since: u64 = request
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = request.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(300));
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let deadline = Instant::now() + timeout;
    let mut store = shared
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let generation = store.watch_generation;
    if since < store.compacted {
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {since} ({})", store.compacted),
            "reason": "Expired", "code": 410,
        }});
        drop(store);
        send_event(&mut stream, &gone)?;
        return write!(stream, "0\r\n\r\n");
    }
    let mut sent = since;
    let mut last_bookmark = Instant::now();
    loop {
        if store.watch_generation != generation || shared.stop.load(Ordering::Relaxed) {
            // Cut: no terminating chunk, as a dropped connection.
            return Ok(());
        }
        let events: Vec<Value> = store
            .history
            .iter()
            .filter(|(rev, k, _, _)| *rev > sent && *k == kind.kind)
            .map(|(_, _, ty, object)| json!({"type": ty, "object": object}))
            .collect();
        let revision = store.revision;
        drop(store);
        for event in &events {
            send_event(&mut stream, event)?;
        }
        sent = revision;
        if bookmarks && last_bookmark.elapsed() > Duration::from_secs(1) {
            let bookmark = json!({"type": "BOOKMARK", "object": {
                "kind": kind.kind, "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": revision.to_string()},
            }});
            send_event(&mut stream, &bookmark)?;
            last_bookmark = Instant::now();
        }
        if Instant::now() > deadline {
            return write!(stream, "0\r\n\r\n");
        }
        store = shared
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (guard, _) = shared
            .changed
            .wait_timeout(store, Duration::from_millis(500))
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        store = guard;
    }
}

/// Serves what the lab writes: every object of its manifest directory
/// (multi-document YAML files), applied to `api` as it changes and
/// deleted from it as it goes, polled every 100 ms until dropped. So the
/// lab's commands (`pod add`, `apply -f`) reach agents that watch the
/// fake API server, as kubectl's reach agents through the real one.
pub struct Mirror {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mirror {
    pub fn start(api: Arc<FakeApi>, manifests: std::path::PathBuf) -> Self {
        // The first copy is complete before the caller goes on.
        let mut known = BTreeMap::new();
        mirror_once(&api, &manifests, &mut known);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                mirror_once(&api, &manifests, &mut known);
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// (kind, namespace, name) → the object as last applied.
type Known = BTreeMap<(String, String, String), Value>;

fn mirror_once(api: &FakeApi, manifests: &std::path::Path, known: &mut Known) {
    use serde::Deserialize as _;
    let mut now = Known::new();
    let mut files = Vec::new();
    let mut dirs = vec![manifests.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                dirs.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
                files.push(path);
            }
        }
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let Ok(object) = Value::deserialize(doc) else {
                continue;
            };
            let Some(kind) = object["kind"].as_str().and_then(kind_of) else {
                continue;
            };
            let (namespace, name) = key_of(&object);
            now.insert((kind.kind.to_owned(), namespace, name), object);
        }
    }
    for (key, object) in &now {
        if known.get(key) != Some(object) {
            api.apply(object.clone());
        }
    }
    for (kind, namespace, name) in known.keys() {
        if !now.contains_key(&(kind.clone(), namespace.clone(), name.clone())) {
            api.delete(kind, namespace, name);
        }
    }
    *known = now;
}
