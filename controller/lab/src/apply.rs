//! The cluster objects users manage, like kubectl would: `apply` and
//! `delete` of YAML files, and namespace labels.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Service;

use super::{
    cluster::{write_manifest, Lab},
    error::{io_err, LabError},
    manifests,
    objects::{self, ObjectKey},
    services, topology,
};

impl Lab {
    /// Creates a namespace, or merges `labels` into an existing one's,
    /// keeping its annotations.
    pub fn label_namespace(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), LabError> {
        topology::validate_dns_label("namespace", namespace)?;
        for (k, v) in labels {
            topology::validate_label(k, v)?;
        }
        let _lock = self.config.lock()?;
        let manifests = self.config.manifests();
        let path = manifests.namespace_path(namespace);
        let existing = existing_metadata(&path);
        let mut merged = existing.labels;
        merged.extend(labels.clone());
        let mut object = manifests::namespace_object(namespace, &merged);
        if let Some(annotations) = existing.annotations {
            object["metadata"]["annotations"] = annotations;
        }
        write_manifest(&manifests, &path, &object)
    }

    /// `kubectl apply -f`: every object of every path, each into its own
    /// file; nothing is written unless all of them are valid.
    pub fn apply(&mut self, paths: &[PathBuf]) -> Result<Vec<ObjectKey>, LabError> {
        let mut objects = read_all(paths)?;
        let _lock = self.config.lock()?;
        self.reload()?;
        let manifests = self.config.manifests();
        self.allocate_services(&mut objects)?;
        for object in &objects {
            let path = object.key.path(&manifests);
            if let Some(existing) = objects::stored_key(&path) {
                if existing != object.key {
                    return Err(LabError::Conflict {
                        path,
                        existing: existing.to_string(),
                        new: object.key.to_string(),
                    });
                }
            }
        }
        for object in &objects {
            write_manifest(&manifests, &object.key.path(&manifests), &object.value)?;
        }
        self.sync_services()?;
        Ok(objects.into_iter().map(|o| o.key).collect())
    }

    /// Gives the Services among `objects` what the API server would (a
    /// ClusterIP, NodePorts), keeping what their stored versions have and
    /// never giving what another Service has.
    fn allocate_services(&self, objects: &mut [objects::Object]) -> Result<(), LabError> {
        let stored = self.stored_services()?;
        let key_of = |s: &Service| (s.metadata.namespace.clone(), s.metadata.name.clone());
        let mut done: Vec<Service> = Vec::new();
        for object in objects.iter_mut().filter(|o| o.key.kind == "Service") {
            let mut service: Service =
                serde_yaml::from_value(object.value.clone()).map_err(|e| LabError::Service {
                    service: object.key.to_string(),
                    reason: e.to_string(),
                })?;
            let own = stored.iter().find(|s| key_of(s) == key_of(&service));
            let others: Vec<&Service> = stored
                .iter()
                .filter(|s| key_of(s) != key_of(&service))
                .chain(done.iter())
                .collect();
            services::allocate(&mut service, own, &others).map_err(|reason| LabError::Service {
                service: object.key.to_string(),
                reason,
            })?;
            object.value = serde_yaml::to_value(&service).map_err(|e| LabError::Service {
                service: object.key.to_string(),
                reason: e.to_string(),
            })?;
            done.push(service);
        }
        Ok(())
    }

    /// `kubectl delete -f`: removes the objects the paths describe; each
    /// with whether it existed.
    pub fn delete(&mut self, paths: &[PathBuf]) -> Result<Vec<(ObjectKey, bool)>, LabError> {
        let objects = read_all(paths)?;
        let _lock = self.config.lock()?;
        self.reload()?;
        for object in objects.iter().filter(|o| o.key.kind == "Namespace") {
            let pods: Vec<String> = self
                .state
                .pods
                .iter()
                .filter(|p| p.namespace == object.key.name)
                .map(|p| p.pod_name().to_string())
                .collect();
            if !pods.is_empty() {
                return Err(LabError::NamespaceInUse {
                    namespace: object.key.name.clone(),
                    pods,
                });
            }
        }
        let manifests = self.config.manifests();
        objects
            .into_iter()
            .map(|object| {
                let path = object.key.path(&manifests);
                let removed = manifests
                    .remove(&path)
                    .map_err(io_err(format!("removing {}", path.display())))?;
                Ok((object.key, removed))
            })
            .collect::<Result<Vec<_>, LabError>>()
            .and_then(|removed| {
                self.sync_services()?;
                Ok(removed)
            })
    }
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<objects::Object>, LabError> {
    let mut all = Vec::new();
    for path in paths {
        all.extend(objects::read_path(path)?);
    }
    Ok(all)
}

/// What `label_namespace` keeps of a stored Namespace (its YAML `text`):
/// its labels, and its annotations as they are (whatever their values).
#[derive(Debug, Default, PartialEq)]
struct Metadata {
    labels: BTreeMap<String, String>,
    annotations: Option<serde_json::Value>,
}

fn stored_metadata(text: &str) -> Metadata {
    let Ok(object) = serde_yaml::from_str::<serde_yaml::Value>(text) else {
        return Metadata::default();
    };
    let metadata = object.get("metadata");
    let field = |name: &str| metadata.and_then(|m| m.get(name)).cloned();
    Metadata {
        labels: field("labels")
            .and_then(|l| serde_yaml::from_value(l).ok())
            .unwrap_or_default(),
        annotations: field("annotations").and_then(|a| serde_json::to_value(a).ok()),
    }
}

/// The labels and annotations of the object stored at `path`, if any.
fn existing_metadata(path: &Path) -> Metadata {
    std::fs::read_to_string(path)
        .map(|text| stored_metadata(&text))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_namespace_keeps_its_labels_and_annotations_whatever_their_values() {
        let kept = stored_metadata(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n  labels: {team: blue}\n  annotations: {policy.sluice.io/audit-mode: true, other: '1'}\n",
        );
        assert_eq!(
            kept.labels,
            BTreeMap::from([("team".into(), "blue".into())])
        );
        assert_eq!(
            kept.annotations,
            Some(serde_json::json!({"policy.sluice.io/audit-mode": true, "other": "1"}))
        );
        assert_eq!(stored_metadata("not: [yaml"), Metadata::default());
    }
}
