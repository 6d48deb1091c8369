//! The cluster objects the agent consumes, and parsing them from manifests.
//!
//! Manifests are split into documents the way `kubectl` does it (a line
//! starting with `---`), not by the YAML parser: a syntax error then costs
//! only its own document, and every error can name the document and line
//! it came from.

use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::policy::validate;

/// One cluster object the agent cares about. Boxed because the variants are
/// large and differ in size.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Node(Box<Node>),
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    NetworkPolicy(Box<NetworkPolicy>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    /// Known by kind and name, but not to be taken as it is.
    Rejected(Box<Rejected>),
}

/// An object whose kind and name are known but whose content cannot be
/// taken: it does not decode, the API server would reject it, or (in a
/// manifest directory) it is defined more than once. It is not a delete:
/// [`ClusterState`](super::ClusterState) keeps the last good version
/// beside it, and the policy compiler isolates what it could have named.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejected {
    pub kind: Kind,
    /// Name and, for namespaced kinds, namespace; nothing else.
    pub metadata: ObjectMeta,
    /// The object as it came, as JSON; several versions when it was
    /// defined more than once.
    pub versions: Vec<Value>,
    /// Why it was rejected, in the API server's words where it has any.
    pub reason: String,
}

impl Rejected {
    pub fn new(key: &ObjectKey, versions: Vec<Value>, reason: String) -> Self {
        Rejected {
            kind: key.kind,
            metadata: ObjectMeta {
                name: Some(key.name.clone()),
                namespace: key.namespace.clone(),
                ..ObjectMeta::default()
            },
            versions,
            reason,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Node,
    Namespace,
    Pod,
    NetworkPolicy,
    Service,
    EndpointSlice,
}

/// Identifies an object across updates: what an `Event::Delete` names.
/// `namespace` is `Some` exactly for namespaced kinds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: String,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Node,
        Kind::Namespace,
        Kind::Pod,
        Kind::NetworkPolicy,
        Kind::Service,
        Kind::EndpointSlice,
    ];

    /// The Kubernetes `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "Node",
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    /// Lower-case form for metric labels, as Prometheus convention has it.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Namespace => "namespace",
            Kind::Pod => "pod",
            Kind::NetworkPolicy => "networkpolicy",
            Kind::Service => "service",
            Kind::EndpointSlice => "endpointslice",
        }
    }

    pub fn is_namespaced(self) -> bool {
        matches!(
            self,
            Kind::Pod | Kind::NetworkPolicy | Kind::Service | Kind::EndpointSlice
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ObjectKey {
    pub fn cluster_scoped(kind: Kind, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            namespace: None,
            name: name.into(),
        }
    }

    pub fn namespaced(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            kind,
            namespace: Some(namespace.into()),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {}/{}", self.kind, namespace, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Node(_) => Kind::Node,
            Resource::Namespace(_) => Kind::Namespace,
            Resource::Pod(_) => Kind::Pod,
            Resource::NetworkPolicy(_) => Kind::NetworkPolicy,
            Resource::Service(_) => Kind::Service,
            Resource::EndpointSlice(_) => Kind::EndpointSlice,
            Resource::Rejected(r) => r.kind,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Node(o) => &o.metadata,
            Resource::Namespace(o) => &o.metadata,
            Resource::Pod(o) => &o.metadata,
            Resource::NetworkPolicy(o) => &o.metadata,
            Resource::Service(o) => &o.metadata,
            Resource::EndpointSlice(o) => &o.metadata,
            Resource::Rejected(r) => &r.metadata,
        }
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Resource::Node(o) => &mut o.metadata,
            Resource::Namespace(o) => &mut o.metadata,
            Resource::Pod(o) => &mut o.metadata,
            Resource::NetworkPolicy(o) => &mut o.metadata,
            Resource::Service(o) => &mut o.metadata,
            Resource::EndpointSlice(o) => &mut o.metadata,
            Resource::Rejected(r) => &mut r.metadata,
        }
    }

    /// The object's key. Objects from [`parse_documents`] always have a name
    /// and, if namespaced, a namespace; for others (hand-built, or from an
    /// API server that broke its contract) missing parts become empty.
    pub fn is_rejected(&self) -> bool {
        matches!(self, Resource::Rejected(_))
    }

    /// The object as JSON, as a [`Rejected`] keeps it.
    pub fn to_value(&self) -> Value {
        let value = match self {
            Resource::Node(o) => serde_json::to_value(o),
            Resource::Namespace(o) => serde_json::to_value(o),
            Resource::Pod(o) => serde_json::to_value(o),
            Resource::NetworkPolicy(o) => serde_json::to_value(o),
            Resource::Service(o) => serde_json::to_value(o),
            Resource::EndpointSlice(o) => serde_json::to_value(o),
            Resource::Rejected(r) => return Value::Array(r.versions.clone()),
        };
        // k8s-openapi types serialize into JSON whatever they hold.
        value.unwrap_or(Value::Null)
    }

    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        let kind = self.kind();
        ObjectKey {
            kind,
            namespace: kind
                .is_namespaced()
                .then(|| meta.namespace.clone().unwrap_or_default()),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// Where in a file a document came from; 1-based, as editors count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Index among the file's non-empty documents.
    pub document: usize,
    /// First line of the document's content.
    pub line: usize,
    /// Index in the `items` of a `kind: List` document.
    pub item: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {} (line {})", self.document, self.line)?;
        if let Some(item) = self.item {
            write!(f, " item {item}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{location}: {kind}")]
pub struct ParseError {
    pub location: Location,
    pub kind: ParseErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("invalid YAML: {0}")]
    Yaml(serde_yaml::Error),
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("expected an object with apiVersion and kind, found {0}")]
    NotAnObject(&'static str),
    #[error("{0} is missing or not a string")]
    MissingField(&'static str),
    #[error("{kind}: {path}{message}")]
    Invalid {
        kind: &'static str,
        /// Where in the object, e.g. `spec.containers[0].ports`, with a
        /// trailing `: `; empty for the object itself.
        path: String,
        message: String,
    },
    /// A well-formed object of a kind the agent does not consume (yet):
    /// to be ignored, not reported as a broken manifest.
    #[error("{api_version} {kind} is not consumed by the agent")]
    Unsupported { api_version: String, kind: String },
}

impl ParseError {
    /// True for objects to skip quietly rather than count as malformed.
    pub fn is_unsupported(&self) -> bool {
        matches!(self.kind, ParseErrorKind::Unsupported { .. })
    }
}

/// Parses a multi-document YAML manifest (`---` separated; empty documents
/// ignored; `kind: List` expanded). One result per object, in file order.
pub fn parse_documents(text: &str) -> Vec<Result<Resource, ParseError>> {
    let mut out = Vec::new();
    for doc in split_documents(text) {
        let location = Location {
            document: doc.index,
            line: doc.line,
            item: None,
        };
        match parse_yaml(&doc) {
            Ok(value) => objects(value, location, &mut out),
            Err(error) => out.push(Err(ParseError {
                location,
                kind: ParseErrorKind::Yaml(error),
            })),
        }
    }
    out
}

/// One document's value. Only a document that fails pays for its place in
/// the file: parsed again behind as many blank lines as precede it, the
/// parser's own "at line N" points into the file, not into the document.
/// Padding every document would cost each one the length of the file
/// before it, quadratic in documents per file.
fn parse_yaml(doc: &RawDocument<'_>) -> Result<Value, serde_yaml::Error> {
    serde_yaml::from_str::<Value>(doc.text).or_else(|_| {
        let padded = "\n".repeat(doc.line - 1) + doc.text;
        serde_yaml::from_str::<Value>(&padded)
    })
}

/// Parses a JSON manifest: one object, a `kind: List`, or several objects
/// in a row (as `kubectl get -o json` of several names prints them).
pub fn parse_json(text: &str) -> Vec<Result<Resource, ParseError>> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    for document in 1.. {
        let start = stream.byte_offset();
        let location = Location {
            document,
            line: line_of_next_token(text, start),
            item: None,
        };
        match stream.next() {
            None => break,
            Some(Ok(value)) => objects(value, location, &mut out),
            Some(Err(error)) => {
                // The stream cannot resynchronise after a syntax error.
                out.push(Err(ParseError {
                    location,
                    kind: ParseErrorKind::Json(error),
                }));
                break;
            }
        }
    }
    out
}

fn line_of_next_token(text: &str, offset: usize) -> usize {
    let rest = &text[offset..];
    let skipped = rest.len() - rest.trim_start().len();
    text[..offset + skipped].matches('\n').count() + 1
}

struct RawDocument<'a> {
    index: usize,
    line: usize,
    text: &'a str,
}

/// Splits on `---` lines like Kubernetes' YAML reader: a line that starts
/// with `---` followed by nothing but blanks or a comment. Documents holding
/// only blanks and comments are dropped and not counted.
fn split_documents(text: &str) -> Vec<RawDocument<'_>> {
    let mut docs = Vec::new();
    let mut push = |start: usize, end: usize, first_line: usize| {
        let chunk = &text[start..end];
        let mut content_line = None;
        for (n, line) in chunk.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                content_line = Some(first_line + n);
                break;
            }
        }
        if let Some(line) = content_line {
            docs.push(RawDocument {
                index: docs.len() + 1,
                line,
                // From the first content line so that `line` and the padding
                // in `parse_documents` agree.
                text: &chunk[nth_line_offset(chunk, line - first_line)..],
            });
        }
    };

    let (mut start, mut first_line) = (0, 1);
    let mut offset = 0;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let end = offset + line.len();
        if is_separator(line) {
            push(start, offset, first_line);
            start = end;
            first_line = n + 2;
        }
        offset = end;
    }
    push(start, text.len(), first_line);
    docs
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| {
        let rest = rest.trim();
        rest.is_empty() || rest.starts_with('#')
    })
}

fn nth_line_offset(text: &str, n: usize) -> usize {
    text.split_inclusive('\n').take(n).map(str::len).sum()
}

/// Turns one parsed document into objects: none (empty document), one, or
/// a `List`'s items.
fn objects(value: Value, location: Location, out: &mut Vec<Result<Resource, ParseError>>) {
    if value.is_null() {
        return; // `---` followed by `~` or `null`: empty, like kubectl.
    }
    if value.get("kind").and_then(Value::as_str) == Some("List") && location.item.is_none() {
        let Value::Object(mut list) = value else {
            unreachable!("only objects have a kind")
        };
        match list.remove("items") {
            Some(Value::Array(items)) => {
                for (n, item) in items.into_iter().enumerate() {
                    let location = Location {
                        item: Some(n + 1),
                        ..location
                    };
                    out.push(object(item, location));
                }
            }
            // `items: null` or absent: `kubectl get -o yaml` of nothing.
            Some(Value::Null) | None => {}
            Some(_) => out.push(Err(ParseError {
                location,
                kind: ParseErrorKind::Invalid {
                    kind: "List",
                    path: "items: ".into(),
                    message: "expected an array".into(),
                },
            })),
        }
        return;
    }
    out.push(object(value, location));
}

fn object(value: Value, location: Location) -> Result<Resource, ParseError> {
    decode_object(value).map_err(|kind| ParseError { location, kind })
}

/// Decodes one object. Without a kind, apiVersion or name it is malformed
/// (`Err`); with them, an object that does not decode or that the API
/// server would reject is a [`Resource::Rejected`].
fn decode_object(value: Value) -> Result<Resource, ParseErrorKind> {
    let Value::Object(map) = &value else {
        return Err(ParseErrorKind::NotAnObject(type_name(&value)));
    };
    let field = |name: &'static str| {
        map.get(name)
            .and_then(Value::as_str)
            .ok_or(ParseErrorKind::MissingField(name))
    };
    let (api_version, kind) = (field("apiVersion")?, field("kind")?);
    let kind = match (api_version, kind) {
        ("v1", "Node") => Kind::Node,
        ("v1", "Namespace") => Kind::Namespace,
        ("v1", "Pod") => Kind::Pod,
        ("networking.k8s.io/v1", "NetworkPolicy") => Kind::NetworkPolicy,
        ("v1", "Service") => Kind::Service,
        ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
        (api_version, kind) => {
            return Err(ParseErrorKind::Unsupported {
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
            })
        }
    };
    let meta = |name: &str| {
        map.get("metadata")
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let name = meta("name").ok_or(ParseErrorKind::MissingField("metadata.name"))?;
    let key = if kind.is_namespaced() {
        // kubectl's default; the API server fills it in the same way.
        ObjectKey::namespaced(kind, meta("namespace").unwrap_or("default"), name)
    } else {
        // The API server drops a namespace on cluster-scoped objects; so do
        // we, so that keys from manifests and from the API agree.
        ObjectKey::cluster_scoped(kind, name)
    };
    let mut resource = match decode_kind(kind, &value) {
        Ok(resource) => resource,
        Err(error) => {
            return Ok(Resource::Rejected(Box::new(Rejected::new(
                &key,
                vec![value],
                error.to_string(),
            ))))
        }
    };
    let meta = resource.metadata_mut();
    meta.name = Some(key.name.clone());
    meta.namespace = key.namespace.clone();
    Ok(admit(resource, || value))
}

/// Decodes `value` as the k8s-openapi type of `kind`.
pub fn decode_kind(kind: Kind, value: &Value) -> Result<Resource, ParseErrorKind> {
    Ok(match kind {
        Kind::Node => Resource::Node(decode(value)?),
        Kind::Namespace => Resource::Namespace(decode(value)?),
        Kind::Pod => Resource::Pod(decode(value)?),
        Kind::NetworkPolicy => Resource::NetworkPolicy(decode(value)?),
        Kind::Service => Resource::Service(decode(value)?),
        Kind::EndpointSlice => Resource::EndpointSlice(decode(value)?),
    })
}

/// The API server's admission of a decoded object: what it would reject
/// becomes [`Resource::Rejected`] (`value`: the object as it came).
pub fn admit(resource: Resource, value: impl FnOnce() -> Value) -> Resource {
    let Resource::NetworkPolicy(policy) = &resource else {
        return resource;
    };
    let key = resource.key();
    let raw = value();
    let known = serde_json::to_value(policy).unwrap_or(Value::Null);
    let unknown = validate::unknown_fields(&raw, &known);
    let errors = validate::network_policy(policy);
    let reason = if !unknown.is_empty() {
        // A misspelt field is dropped by decoding: `form:` for `from:`
        // would leave a rule that admits everyone.
        validate::strict_decoding(&unknown)
    } else if !errors.is_empty() {
        validate::rejection("NetworkPolicy.networking.k8s.io", &key.name, &errors)
    } else {
        return resource;
    };
    Resource::Rejected(Box::new(Rejected::new(&key, vec![raw], reason)))
}

fn decode<T: DeserializeOwned + k8s_openapi::Resource>(
    value: &Value,
) -> Result<Box<T>, ParseErrorKind> {
    serde_path_to_error::deserialize(value)
        .map(Box::new)
        .map_err(|error| {
            let path = error.path().to_string();
            ParseErrorKind::Invalid {
                kind: T::KIND,
                path: if path == "." {
                    String::new()
                } else {
                    format!("{path}: ")
                },
                message: error.into_inner().to_string(),
            }
        })
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::fixtures::{self, join, CONFIG_MAP, NAMESPACE, NODE, POD, POLICY};

    fn ok(text: &str) -> Vec<Resource> {
        parse_documents(text)
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("unexpected error: {e}")))
            .collect()
    }

    fn one_error(text: &str) -> ParseError {
        let mut results = parse_documents(text);
        assert_eq!(results.len(), 1, "{results:?}");
        results.remove(0).expect_err("should not parse")
    }

    #[test]
    fn parses_a_node_with_cidrs_and_addresses() {
        let [Resource::Node(node)] = &ok(NODE)[..] else {
            panic!("not one node")
        };
        assert_eq!(node.metadata.name.as_deref(), Some("node-a"));
        let spec = node.spec.as_ref().unwrap();
        assert_eq!(
            spec.pod_cidrs.as_deref().unwrap(),
            ["10.244.1.0/24", "fd00:10:244:1::/64"]
        );
        let addresses = node.status.as_ref().unwrap().addresses.as_ref().unwrap();
        assert_eq!(addresses[0].type_, "InternalIP");
        assert_eq!(addresses[0].address, "192.168.56.11");
    }

    #[test]
    fn parses_a_pod_with_labels_ports_and_ip() {
        let [Resource::Pod(pod)] = &ok(POD)[..] else {
            panic!("not one pod")
        };
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["app"], "web");
        let ports = pod.spec.as_ref().unwrap().containers[0]
            .ports
            .as_ref()
            .unwrap();
        assert_eq!(ports[0].container_port, 8080);
        assert_eq!(ports[1].name.as_deref(), Some("metrics"));
        let status = pod.status.as_ref().unwrap();
        assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.5"));
    }

    #[test]
    fn parses_a_network_policy() {
        let [Resource::NetworkPolicy(policy)] = &ok(POLICY)[..] else {
            panic!("not one policy")
        };
        let spec = policy.spec.as_ref().unwrap();
        let rule = &spec.ingress.as_ref().unwrap()[0];
        assert_eq!(rule.from.as_ref().unwrap().len(), 2);
        assert_eq!(rule.ports.as_ref().unwrap()[1].end_port, Some(9099));
    }

    #[test]
    fn multi_document_files_keep_order_and_skip_empty_documents() {
        let text = format!(
            "---\n# leading separator and comments only\n---\n{}---\n\n---\n~\n---   # trailing comment\n{}",
            NAMESPACE, POD
        );
        let keys: Vec<_> = ok(&text).iter().map(|r| r.key().to_string()).collect();
        assert_eq!(keys, ["Namespace shop", "Pod shop/web-7d4b9c5f6-x2x9k"]);
    }

    #[test]
    fn keys_display_kind_namespace_and_name() {
        let keys: Vec<_> = ok(&join(&[NODE, POLICY])).iter().map(|r| r.key()).collect();
        assert_eq!(keys[0], ObjectKey::cluster_scoped(Kind::Node, "node-a"));
        assert_eq!(
            keys[1],
            ObjectKey::namespaced(Kind::NetworkPolicy, "shop", "web-allow-frontend")
        );
        assert_eq!(keys[0].to_string(), "Node node-a");
        assert_eq!(keys[1].to_string(), "NetworkPolicy shop/web-allow-frontend");
    }

    #[test]
    fn namespaced_objects_default_to_the_default_namespace() {
        let pod = POD.replace("  namespace: shop\n", "");
        assert_eq!(ok(&pod)[0].key().namespace.as_deref(), Some("default"));
        // ...and cluster-scoped ones lose a stray namespace, as in the API.
        let node = NODE.replace("  name: node-a\n", "  name: node-a\n  namespace: shop\n");
        assert_eq!(ok(&node)[0].key().namespace, None);
    }

    #[test]
    fn lists_are_expanded() {
        let items = join(&[NODE, POD])
            .replace("---\n", "")
            .lines()
            .map(|line| {
                if line.starts_with("apiVersion") {
                    format!("- {line}")
                } else {
                    format!("  {line}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let text = format!("apiVersion: v1\nkind: List\nmetadata: {{}}\nitems:\n{items}\n");
        let kinds: Vec<_> = ok(&text).iter().map(Resource::kind).collect();
        assert_eq!(kinds, [Kind::Node, Kind::Pod]);

        assert!(ok("apiVersion: v1\nkind: List\nitems: []\n").is_empty());
        let error = one_error("apiVersion: v1\nkind: List\nitems: {}\n");
        assert_eq!(
            error.to_string(),
            "document 1 (line 1): List: items: expected an array"
        );
    }

    #[test]
    fn errors_in_list_items_name_the_item() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: a}\n- apiVersion: v1\n  kind: Namespace\n  metadata: {}\n";
        let results = parse_documents(text);
        assert!(results[0].is_ok());
        let error = results[1].as_ref().unwrap_err();
        assert_eq!(error.location.item, Some(2));
        assert_eq!(
            error.to_string(),
            "document 1 (line 1) item 2: metadata.name is missing or not a string"
        );
    }

    #[test]
    fn unsupported_kinds_are_told_apart_from_malformed_ones() {
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n";
        let old_slice =
            "apiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\nmetadata: {name: s}\n";
        let results = parse_documents(&join(&[CONFIG_MAP, deployment, old_slice, NAMESPACE]));
        assert_eq!(results.len(), 4);
        for result in &results[..3] {
            assert!(result.as_ref().unwrap_err().is_unsupported(), "{result:?}");
        }
        assert!(results[3].is_ok());
        // A known kind under an apiVersion we do not read is not ours either.
        let old = POLICY.replace("networking.k8s.io/v1", "extensions/v1beta1");
        assert!(one_error(&old).is_unsupported());
    }

    #[test]
    fn missing_name_is_malformed() {
        let error = one_error("apiVersion: v1\nkind: Namespace\nmetadata:\n  labels: {a: b}\n");
        assert!(!error.is_unsupported());
        assert!(matches!(
            error.kind,
            ParseErrorKind::MissingField("metadata.name")
        ));
        let error = one_error("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"\"\n");
        assert!(matches!(
            error.kind,
            ParseErrorKind::MissingField("metadata.name")
        ));
    }

    #[test]
    fn missing_api_version_or_kind_is_malformed() {
        let error = one_error("kind: Pod\nmetadata: {name: p}\n");
        assert_eq!(
            error.to_string(),
            "document 1 (line 1): apiVersion is missing or not a string"
        );
        let error = one_error("apiVersion: v1\nmetadata: {name: p}\n");
        assert!(matches!(error.kind, ParseErrorKind::MissingField("kind")));
        let error = one_error("- just\n- a list\n");
        assert_eq!(
            error.to_string(),
            "document 1 (line 1): expected an object with apiVersion and kind, found a list"
        );
    }

    /// The reason of the one object in `text`, which is rejected.
    fn one_rejection(text: &str) -> String {
        let mut results = parse_documents(text);
        assert_eq!(results.len(), 1, "{results:?}");
        match results.remove(0) {
            Ok(Resource::Rejected(r)) => {
                assert_eq!(r.versions.len(), 1);
                r.reason
            }
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[test]
    fn wrong_types_reject_the_object_and_name_the_field() {
        let pod = POD.replace("containerPort: 8080", "containerPort: eighty");
        let message = one_rejection(&pod);
        assert!(
            message.starts_with("Pod: spec.containers[0].ports[0].containerPort: invalid type"),
            "{message}"
        );
        let node = NODE.replace(
            "podCIDRs:\n  - 10.244.1.0/24\n  - fd00:10:244:1::/64\n",
            "podCIDRs: 10.244.1.0/24\n",
        );
        let message = one_rejection(&node);
        assert!(
            message.contains("Node: spec.podCIDRs: invalid type"),
            "{message}"
        );
        let labels = NAMESPACE.replace("team: payments", "team: 7");
        let message = one_rejection(&labels);
        assert!(
            message.contains("metadata.labels.team: invalid type: integer"),
            "{message}"
        );
    }

    #[test]
    fn a_misspelt_field_of_a_network_policy_rejects_it() {
        // Without `from`, the rule would admit every peer.
        let policy = POLICY.replace("  - from:", "  - form:");
        assert_ne!(policy, POLICY, "the fixture changed");
        assert_eq!(
            one_rejection(&policy),
            "NetworkPolicy in version \"v1\" cannot be handled as a NetworkPolicy: strict decoding error: unknown field \"spec.ingress[0].form\""
        );
    }

    #[test]
    fn a_network_policy_the_api_server_would_reject_is_rejected_with_its_message() {
        let policy = POLICY.replace("operator: In", "operator: Equals");
        assert_eq!(
            one_rejection(&policy),
            "NetworkPolicy.networking.k8s.io \"web-allow-frontend\" is invalid: spec.ingress[0].from[0].podSelector.matchExpressions[0].operator: Invalid value: \"Equals\": not a valid selector operator"
        );
        let [rejected] = &ok(&policy)[..] else {
            panic!("one object")
        };
        assert_eq!(
            rejected.key(),
            ObjectKey::namespaced(Kind::NetworkPolicy, "shop", "web-allow-frontend")
        );
    }

    #[test]
    fn a_syntax_error_costs_only_its_own_document_and_names_the_file_line() {
        let broken = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n";
        let text = join(&[
            NAMESPACE,
            broken,
            &fixtures::pod("shop", "db", "10.244.1.9"),
        ]);
        let results = parse_documents(&text);
        assert_eq!(results.len(), 3, "{results:?}");
        assert!(results[0].is_ok());
        assert!(results[2].is_ok());
        let error = results[1].as_ref().unwrap_err();
        let broken_line = NAMESPACE.lines().count() + 2;
        assert_eq!(error.location.document, 2);
        assert_eq!(error.location.line, broken_line);
        let message = error.to_string();
        assert!(message.starts_with(&format!("document 2 (line {broken_line}): invalid YAML")));
        // The parser's own position is relative to the file too.
        assert!(
            message.contains(&format!("line {}", broken_line + 3))
                || message.contains(&format!("line {}", broken_line + 4)),
            "{message}"
        );
    }

    #[test]
    fn separators_need_a_line_of_their_own() {
        // `---x` or `--- foo` is content, not a separator (kubectl agrees).
        assert!(!is_separator("---x\n"));
        assert!(!is_separator("--- foo\n"));
        assert!(!is_separator(" ---\n"));
        assert!(is_separator("---\n"));
        assert!(is_separator("---  \r\n"));
        assert!(is_separator("--- # two\n"));
        assert!(is_separator("---"));
    }

    #[test]
    fn json_objects_lists_and_streams() {
        let pod: Value = serde_yaml::from_str(POD).unwrap();
        let node: Value = serde_yaml::from_str(NODE).unwrap();
        let one = serde_json::to_string_pretty(&pod).unwrap();
        assert_eq!(parse_json(&one).len(), 1);
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [node, pod]});
        let kinds: Vec<_> = parse_json(&list.to_string())
            .into_iter()
            .map(|r| r.unwrap().kind())
            .collect();
        assert_eq!(kinds, [Kind::Node, Kind::Pod]);
        let stream = format!("{one}\n{}\n", serde_json::to_string_pretty(&node).unwrap());
        let results = parse_json(&stream);
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(Result::is_ok));
        assert!(parse_json("  \n").is_empty());
    }

    #[test]
    fn json_errors_name_document_and_line() {
        let namespace = r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}"#;
        let text = format!("{namespace}\n\n{{\"apiVersion\": \"v1\",\n \"kind\": }}\n");
        let results = parse_json(&text);
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        let error = results[1].as_ref().unwrap_err();
        assert_eq!(error.location.document, 2);
        assert_eq!(error.location.line, 3);
        assert!(matches!(error.kind, ParseErrorKind::Json(_)), "{error}");
    }
}
