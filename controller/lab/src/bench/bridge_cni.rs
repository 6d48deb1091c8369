//! The usual CNI setup to compare with: Debian's reference `bridge` plugin
//! with `host-local` IPAM (containernetworking-plugins), invoked as a
//! container runtime invokes them, wiring pod namespaces onto a Linux
//! bridge in a "node" namespace of the bench's own.
//!
//! Everything it makes is removed on drop: each pod gets its CNI DEL (so
//! host-local releases its address), then the pod and node namespaces go
//! (the bridge with the node), then host-local's data directory.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;
use serde_json::{json, Value};

use super::throughput::BenchError;
use crate::{cni::CniCall, netns::Netns};

/// Where Debian's containernetworking-plugins put the plugins.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";
const CNI_VERSION: &str = "1.0.0";
const BRIDGE: &str = "cni0";
const IFNAME: &str = "eth0";

/// The network config list a runtime would read from /etc/cni/net.d: one
/// `bridge` plugin, the node's gateway on the bridge, no masquerade (pod to
/// pod on one node never leaves it), addresses by `host-local` from
/// `subnet`, its state in `data_dir`.
pub fn conflist(name: &str, subnet: Ipv4Net, data_dir: &Path) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet.to_string()}]],
                "dataDir": data_dir.display().to_string(),
            },
        }],
    })
}

/// The config plugin `index` of a conflist gets on stdin, as libcni builds
/// it: the plugin's own object with the list's `name` and `cniVersion`, and
/// the previous plugin's result (ADD) or the cached result (DEL) as
/// `prevResult`.
pub fn plugin_config(conflist: &Value, index: usize, prev_result: Option<&Value>) -> Option<Value> {
    let mut config = conflist["plugins"].get(index)?.clone();
    let object = config.as_object_mut()?;
    object.insert("name".into(), conflist["name"].clone());
    object.insert("cniVersion".into(), conflist["cniVersion"].clone());
    if let Some(prev) = prev_result {
        object.insert("prevResult".into(), prev.clone());
    }
    Some(config)
}

/// The first IPv4 address of a CNI result.
pub fn result_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str()?.parse::<Ipv4Net>().ok())
        .map(|net| net.addr())
        .next()
}

/// A pod wired by the bridge plugin.
pub struct BridgePod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    container_id: String,
    /// The ADD result, which DEL gets back as `prevResult`.
    result: Value,
}

/// A node namespace with pods on a bridge; see the module's comment.
pub struct BridgeNode {
    pods: Vec<BridgePod>,
    node: Netns,
    data_dir: PathBuf,
    conflist: Value,
}

impl BridgeNode {
    /// A node namespace `<prefix>-node` whose pods get addresses from
    /// `subnet`; host-local's state goes to a directory under the system's
    /// temp dir named after `prefix` (removed first, in case a killed run
    /// left it).
    pub fn create(prefix: &str, subnet: Ipv4Net) -> Result<Self, BenchError> {
        let data_dir = std::env::temp_dir().join(format!("{prefix}-host-local"));
        let _ = std::fs::remove_dir_all(&data_dir);
        let node = Netns::create(&format!("{prefix}-node")).map_err(|source| BenchError::Io {
            what: format!("creating netns {prefix}-node"),
            source,
        })?;
        // Kubernetes nodes have bridged traffic pass iptables (kubeadm
        // refuses to join a node without it, kube-proxy needs it), so the
        // bridge is measured that way. The setting is the namespace's own
        // and goes with it.
        let sysctl = || {
            node.command("sysctl")
                .and_then(|mut c| {
                    c.args(["-qw", "net.bridge.bridge-nf-call-iptables=1"])
                        .output()
                })
                .map_err(|source| BenchError::Io {
                    what: "running sysctl in the bridge node".into(),
                    source,
                })
        };
        let mut set = sysctl()?;
        if !set.status.success() {
            // The setting exists once br_netfilter is loaded (built in on
            // some kernels, a module on most distributions').
            let _ = std::process::Command::new("modprobe")
                .arg("br_netfilter")
                .output();
            set = sysctl()?;
        }
        if !set.status.success() {
            return Err(BenchError::Failed(format!(
                "net.bridge.bridge-nf-call-iptables in {}: {} (is br_netfilter loaded? \
                 modprobe br_netfilter)",
                node.name(),
                String::from_utf8_lossy(&set.stderr).trim()
            )));
        }
        let conflist = conflist(&format!("{prefix}-net"), subnet, &data_dir);
        Ok(Self {
            pods: Vec::new(),
            node,
            data_dir,
            conflist,
        })
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// Creates the pod namespace `<prefix>-<name>` and wires it with ADD.
    pub fn add_pod(&mut self, name: &str) -> Result<&BridgePod, BenchError> {
        let prefix = self.node.name().trim_end_matches("-node").to_owned();
        let ns_name = format!("{prefix}-{name}");
        let ns = Netns::create(&ns_name).map_err(|source| BenchError::Io {
            what: format!("creating netns {ns_name}"),
            source,
        })?;
        let container_id = ns_name.clone();
        let out = self
            .call("ADD", &ns, &container_id, None)?
            .invoke()
            .map_err(|source| BenchError::Io {
                what: "running the bridge plugin".into(),
                source,
            })?;
        let result = out.json().filter(|_| out.success).ok_or_else(|| {
            BenchError::Failed(format!(
                "bridge ADD of {ns_name}: {} {}",
                out.stdout.trim(),
                out.stderr.trim()
            ))
        });
        // From here on the pod is held, so a failure below still gets its
        // DEL on drop.
        self.pods.push(BridgePod {
            ns,
            ip: Ipv4Addr::UNSPECIFIED,
            container_id,
            result: result.as_ref().map_or(Value::Null, Clone::clone),
        });
        let result = result?;
        let ip = result_ipv4(&result).ok_or_else(|| {
            BenchError::Failed(format!("bridge ADD of {ns_name} gave no IPv4: {result}"))
        })?;
        let pod = self.pods.last_mut().expect("just pushed");
        pod.ip = ip;
        Ok(pod)
    }

    fn call(
        &self,
        command: &str,
        pod: &Netns,
        container_id: &str,
        prev_result: Option<&Value>,
    ) -> Result<CniCall, BenchError> {
        let config = plugin_config(&self.conflist, 0, prev_result)
            .ok_or_else(|| BenchError::Failed("the conflist has no plugin".into()))?;
        let plugin = Path::new(PLUGIN_DIR).join("bridge");
        if !plugin.exists() {
            return Err(BenchError::Failed(format!(
                "{} is missing (Debian package containernetworking-plugins)",
                plugin.display()
            )));
        }
        Ok(CniCall::new(&plugin, command, config)
            .run_in(self.node.path())
            .container(container_id, &pod.path().display().to_string(), IFNAME))
    }
}

impl Drop for BridgeNode {
    fn drop(&mut self) {
        for pod in std::mem::take(&mut self.pods).into_iter().rev() {
            let prev = Some(&pod.result).filter(|r| !r.is_null());
            if let Ok(call) = self.call("DEL", &pod.ns, &pod.container_id, prev) {
                match call.invoke() {
                    Ok(out) if out.success => {}
                    Ok(out) => tracing::warn!(
                        pod = pod.ns.name(),
                        stdout = out.stdout.trim(),
                        stderr = out.stderr.trim(),
                        "bridge DEL failed"
                    ),
                    Err(e) => tracing::warn!(pod = pod.ns.name(), error = %e, "bridge DEL failed"),
                }
            }
            // The pod's namespace goes here, after its DEL.
        }
        // The node namespace (and the bridge in it) goes with the field;
        // host-local's state is ours to remove.
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_is_a_bridge_with_host_local_in_our_dir() {
        let list = conflist(
            "bench-net",
            "10.22.0.0/24".parse().unwrap(),
            Path::new("/tmp/x-host-local"),
        );
        assert_eq!(list["cniVersion"], "1.0.0");
        let bridge = &list["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/x-host-local");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.22.0.0/24");
    }

    #[test]
    fn a_plugin_gets_its_object_with_the_lists_name_and_version() {
        let list = conflist(
            "bench-net",
            "10.22.0.0/24".parse().unwrap(),
            Path::new("/tmp/d"),
        );
        let add = plugin_config(&list, 0, None).unwrap();
        assert_eq!(add["name"], "bench-net");
        assert_eq!(add["cniVersion"], "1.0.0");
        assert_eq!(add["type"], "bridge");
        assert!(add.get("plugins").is_none());
        assert!(add.get("prevResult").is_none());
        let result = json!({"cniVersion": "1.0.0", "ips": [{"address": "10.22.0.2/24"}]});
        let del = plugin_config(&list, 0, Some(&result)).unwrap();
        assert_eq!(del["prevResult"], result);
        assert!(plugin_config(&list, 1, None).is_none());
    }

    #[test]
    fn the_pods_address_comes_from_the_result() {
        let result = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/p"}],
            "ips": [{"interface": 2, "address": "10.22.0.3/24", "gateway": "10.22.0.1"}],
        });
        assert_eq!(result_ipv4(&result), Some(Ipv4Addr::new(10, 22, 0, 3)));
        assert_eq!(result_ipv4(&json!({"ips": []})), None);
    }
}
