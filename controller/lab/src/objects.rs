//! Objects users give `sluice lab apply -f` / `delete -f`: multi-document
//! YAML (or JSON), checked the way the API server would reject garbage
//! before anything is written.

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

use serde::Deserialize as _;
use serde_yaml::{Mapping, Value};

use super::{
    manifests::{ManifestDir, NAMESPACE_NAME_LABEL},
    topology::{validate_dns_label, validate_dns_subdomain},
};

pub const DEFAULT_NAMESPACE: &str = "default";

/// What identifies an object in the datastore.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: String,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = self.kind.to_ascii_lowercase();
        match &self.namespace {
            Some(ns) => write!(f, "{kind} {ns}/{}", self.name),
            None => write!(f, "{kind} {}", self.name),
        }
    }
}

impl ObjectKey {
    /// Where the object is stored. Namespaces share the lab's own
    /// namespace files, so there is never a second copy of one.
    pub fn path(&self, dir: &ManifestDir) -> PathBuf {
        if self.kind == "Namespace" {
            dir.namespace_path(&self.name)
        } else {
            dir.object_path(&self.kind, self.namespace.as_deref(), &self.name)
        }
    }
}

/// One object as written, with defaults an API server would fill in.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub key: ObjectKey,
    pub value: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{origin}: document {doc}: not valid YAML: {source}")]
    Yaml {
        origin: String,
        doc: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{origin}: document {doc}: {reason}")]
    Invalid {
        origin: String,
        doc: usize,
        reason: String,
    },
    #[error("{0}: no objects (empty input)")]
    Empty(String),
    #[error("{0}: no .yaml, .yml or .json files in this directory")]
    EmptyDir(PathBuf),
}

/// Kinds without a namespace. Anything else gets `default` when its
/// metadata names none, as kubectl does.
pub fn is_cluster_scoped(kind: &str) -> bool {
    matches!(
        kind,
        "Namespace"
            | "Node"
            | "ClusterNetworkPolicy"
            | "AdminNetworkPolicy"
            | "BaselineAdminNetworkPolicy"
            | "ClusterRole"
            | "ClusterRoleBinding"
            | "CustomResourceDefinition"
    )
}

/// Parses every document of `text` (`origin` names it in errors); fails on
/// the first invalid one, so callers write all or nothing.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Object>, ObjectError> {
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_no = i + 1;
        let value = Value::deserialize(doc).map_err(|source| ObjectError::Yaml {
            origin: origin.to_owned(),
            doc: doc_no,
            source,
        })?;
        collect(value, &mut objects).map_err(|reason| ObjectError::Invalid {
            origin: origin.to_owned(),
            doc: doc_no,
            reason,
        })?;
    }
    if objects.is_empty() {
        return Err(ObjectError::Empty(origin.to_owned()));
    }
    Ok(objects)
}

/// Reads a file, or every manifest file of a directory (not recursing, as
/// `kubectl -f DIR` does), in name order.
pub fn read_path(path: &Path) -> Result<Vec<Object>, ObjectError> {
    let read_err = |source| ObjectError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        return parse(&text, &path.display().to_string());
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ObjectError::EmptyDir(path.to_owned()));
    }
    let mut objects = Vec::new();
    for file in files {
        objects.extend(read_path(&file)?);
    }
    Ok(objects)
}

fn collect(value: Value, out: &mut Vec<Object>) -> Result<(), String> {
    let Value::Mapping(mut map) = value else {
        return match value {
            // An empty document, e.g. after a trailing `---`.
            Value::Null => Ok(()),
            _ => Err("not an object (want a mapping with apiVersion, kind and metadata)".into()),
        };
    };
    let api_version = string_field(&map, "apiVersion")?;
    if api_version.is_empty() {
        return Err("apiVersion is empty".into());
    }
    let kind = string_field(&map, "kind")?;
    if !kind.starts_with(|c: char| c.is_ascii_uppercase())
        || !kind.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(format!("kind {kind:?} is not a Kubernetes kind"));
    }
    if kind == "List" || kind.ends_with("List") {
        let Some(Value::Sequence(items)) = map.remove("items") else {
            return Err(format!("{kind} without an items list"));
        };
        for (i, item) in items.into_iter().enumerate() {
            collect(item, out).map_err(|e| format!("item {}: {e}", i + 1))?;
        }
        return Ok(());
    }
    match kind.as_str() {
        "Pod" => return Err("pods are made with `sluice lab pod add NS/NAME --node NODE`".into()),
        "Node" => return Err("nodes are made by `sluice lab up --nodes N`".into()),
        _ => {}
    }
    let Some(Value::Mapping(metadata)) = map.get_mut("metadata") else {
        return Err(format!("{kind} without metadata"));
    };
    let name = string_field(metadata, "name").map_err(|e| format!("metadata: {e}"))?;
    validate_dns_subdomain("metadata.name", &name).map_err(|e| e.to_string())?;
    let namespace = if is_cluster_scoped(&kind) {
        None
    } else {
        let ns = match metadata.get("namespace") {
            None | Some(Value::Null) => {
                metadata.insert("namespace".into(), DEFAULT_NAMESPACE.into());
                DEFAULT_NAMESPACE.to_owned()
            }
            Some(Value::String(ns)) => ns.clone(),
            Some(_) => return Err("metadata.namespace is not a string".into()),
        };
        validate_dns_label("metadata.namespace", &ns).map_err(|e| e.to_string())?;
        Some(ns)
    };
    if kind == "Namespace" {
        // The API server labels every namespace with its name.
        let labels = metadata
            .entry("labels".into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        match labels {
            Value::Mapping(labels) => {
                labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone().into());
            }
            Value::Null => {
                *labels = Value::Mapping(Mapping::from_iter([(
                    NAMESPACE_NAME_LABEL.into(),
                    name.clone().into(),
                )]));
            }
            _ => return Err("metadata.labels is not a mapping".into()),
        }
    }
    out.push(Object {
        key: ObjectKey {
            kind,
            namespace,
            name,
        },
        value: Value::Mapping(map),
    });
    Ok(())
}

fn string_field(map: &Mapping, key: &str) -> Result<String, String> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{key} is not a string")),
        None => Err(format!("{key} is missing")),
    }
}

/// The key of whatever object a stored file holds, if it parses.
pub fn stored_key(path: &Path) -> Option<ObjectKey> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut objects = parse(&text, "").ok()?;
    (objects.len() == 1).then(|| objects.remove(0).key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: x
spec:
  podSelector: {}
  policyTypes: [Ingress]
";

    #[test]
    fn multi_document_input_with_defaults() {
        let text = format!(
            "{POLICY}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow\nspec: {{}}\n---\n"
        );
        let objects = parse(&text, "in.yaml").expect("parse");
        let keys: Vec<String> = objects.iter().map(|o| o.key.to_string()).collect();
        assert_eq!(
            keys,
            ["networkpolicy x/deny-all", "networkpolicy default/allow"]
        );
        assert_eq!(objects[1].value["metadata"]["namespace"], "default");
        assert_eq!(objects[0].value["spec"]["policyTypes"][0], "Ingress");
    }

    #[test]
    fn lists_expand_and_namespaces_get_their_name_label() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: x, labels: {ns: x}}\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: y}\n";
        let objects = parse(text, "list").expect("parse");
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0].key.namespace, None);
        assert_eq!(objects[0].value["metadata"]["labels"]["ns"], "x");
        assert_eq!(
            objects[0].value["metadata"]["labels"][NAMESPACE_NAME_LABEL],
            "x"
        );
        assert_eq!(
            objects[1].value["metadata"]["labels"][NAMESPACE_NAME_LABEL],
            "y"
        );
        let dir = ManifestDir::new("/m");
        assert_eq!(objects[0].key.path(&dir), dir.namespace_path("x"));
    }

    #[test]
    fn invalid_documents_are_rejected_with_their_position() {
        let cases = [
            ("kind: [", "not valid YAML"),
            ("- a\n- b\n", "not an object"),
            (
                "kind: NetworkPolicy\nmetadata: {name: a}\n",
                "apiVersion is missing",
            ),
            ("apiVersion: v1\nmetadata: {name: a}\n", "kind is missing"),
            (
                "apiVersion: v1\nkind: networkpolicy\nmetadata: {name: a}\n",
                "not a Kubernetes kind",
            ),
            ("apiVersion: v1\nkind: ConfigMap\n", "without metadata"),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
                "name is missing",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n",
                "metadata.name",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: 7}\n",
                "not a string",
            ),
            (
                "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\n",
                "pod add",
            ),
            (
                "apiVersion: v1\nkind: Node\nmetadata: {name: a}\n",
                "lab up",
            ),
            ("", "no objects"),
            ("---\n---\n", "no objects"),
        ];
        for (text, want) in cases {
            let err = parse(text, "f.yaml").expect_err(text).to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.starts_with("f.yaml"), "{err}");
        }
        let second_bad = format!("{POLICY}---\napiVersion: v1\nkind: X\n");
        let err = parse(&second_bad, "f").expect_err("second doc").to_string();
        assert!(err.contains("document 2"), "{err}");
    }

    #[test]
    fn directories_read_manifest_files_in_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("b.yaml"), POLICY).expect("write");
        std::fs::write(
            tmp.path().join("a.json"),
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"y"}}"#,
        )
        .expect("write");
        std::fs::write(tmp.path().join("notes.txt"), "not yaml: [").expect("write");
        let keys: Vec<String> = read_path(tmp.path())
            .expect("read")
            .iter()
            .map(|o| o.key.to_string())
            .collect();
        assert_eq!(keys, ["configmap y/c", "networkpolicy x/deny-all"]);
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            read_path(empty.path()),
            Err(ObjectError::EmptyDir(_))
        ));
        assert!(matches!(
            read_path(&tmp.path().join("missing.yaml")),
            Err(ObjectError::Read { .. })
        ));
    }
}
