//! Realistic manifests shared by the cluster tests, shaped like what
//! `kubectl get -o yaml` prints (status, managed noise and all), so parsing
//! is tested against what real clusters and the lab hand us.

pub const NODE: &str = r#"apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels:
    kubernetes.io/hostname: node-a
    kubernetes.io/os: linux
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
  creationTimestamp: "2025-01-10T09:00:00Z"
  resourceVersion: "4211"
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs:
  - 10.244.1.0/24
  - fd00:10:244:1::/64
status:
  addresses:
  - type: InternalIP
    address: 192.168.56.11
  - type: Hostname
    address: node-a
  capacity:
    cpu: "4"
    memory: 8023776Ki
    pods: "110"
"#;

pub const NAMESPACE: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    kubernetes.io/metadata.name: shop
    team: payments
"#;

pub const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web-7d4b9c5f6-x2x9k
  namespace: shop
  labels:
    app: web
    pod-template-hash: 7d4b9c5f6
  creationTimestamp: null
spec:
  nodeName: node-a
  containers:
  - name: nginx
    image: nginx:1.27
    ports:
    - name: http
      containerPort: 8080
      protocol: TCP
    - name: metrics
      containerPort: 9090
    resources:
      limits:
        memory: 128Mi
status:
  phase: Running
  hostIP: 192.168.56.11
  podIP: 10.244.1.5
  podIPs:
  - ip: 10.244.1.5
"#;

pub const POLICY: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-allow-frontend
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: web
  policyTypes:
  - Ingress
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          team: payments
      podSelector:
        matchExpressions:
        - key: role
          operator: In
          values: [frontend, checkout]
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    ports:
    - protocol: TCP
      port: http
    - protocol: TCP
      port: 9090
      endPort: 9099
"#;

pub const SERVICE: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: http
"#;

pub const ENDPOINT_SLICE: &str = r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- port: 8080
  protocol: TCP
endpoints:
- addresses: [10.244.1.7]
  conditions: {ready: true}
"#;

/// A kind the agent does not read.
pub const CONFIG_MAP: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: shop}\ndata: {a: b}\n";

/// A pod manifest with another name, for tests that need several.
pub fn pod(namespace: &str, name: &str, ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels:
    app: {name}
spec:
  containers:
  - name: main
    image: busybox:1.36
status:
  podIP: {ip}
"#
    )
}

/// `docs` joined the way `kubectl` and humans write multi-document files.
pub fn join(docs: &[&str]) -> String {
    docs.join("---\n")
}
