#!/usr/bin/env python3
"""A CRI client, as kubelet is one, for sluice's containerd test.

    cri.py ENDPOINT version
    cri.py ENDPOINT run NAMESPACE NAME UID CGROUP_PARENT LOG_DIR
        -> one JSON line: {"id", "ip", "state", "netns"}
    cri.py ENDPOINT stop ID
    cri.py ENDPOINT remove ID

ENDPOINT is containerd's gRPC socket (unix:///path). The stubs are
generated at each run from runtime_v1.proto beside this file (grpcio-tools,
into a temporary directory removed once they are loaded). Exit status 1 with the
gRPC error on stderr when the runtime refuses.
"""

import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def stubs():
    from grpc_tools import protoc

    # Generated and imported in a directory removed right after: the
    # modules stay loaded. Run from outside the package: protoc and the
    # import see only paths.
    with tempfile.TemporaryDirectory(prefix="sluice-cri-") as out:
        os.chdir(out)
        status = protoc.main(
            ["protoc", f"-I{HERE}", f"--python_out={out}", f"--grpc_python_out={out}",
             os.path.join(HERE, "runtime_v1.proto")]
        )
        if status != 0:
            sys.exit(f"protoc failed: {status}")
        sys.path.insert(0, out)
        import runtime_v1_pb2 as pb
        import runtime_v1_pb2_grpc as rpc

        sys.path.remove(out)
        os.chdir("/")
    return pb, rpc


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    import grpc

    pb, rpc = stubs()
    runtime = rpc.RuntimeServiceStub(grpc.insecure_channel(argv[1]))
    command, args = argv[2], argv[3:]
    try:
        if command == "version":
            v = runtime.Version(pb.VersionRequest(), timeout=30)
            print(json.dumps({"runtime": v.runtime_name, "version": v.runtime_version,
                              "api": v.runtime_api_version}))
        elif command == "run":
            namespace, name, uid, cgroup_parent, log_dir = args
            config = pb.PodSandboxConfig(
                metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace),
                hostname=name,
                log_directory=log_dir,
                labels={"io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": name},
                linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
            )
            sandbox = runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=config), timeout=120)
            status = runtime.PodSandboxStatus(
                pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox.pod_sandbox_id, verbose=True),
                timeout=30)
            info = json.loads(status.info.get("info", "{}"))
            namespaces = info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", [])
            netns = next((n.get("path") for n in namespaces if n.get("type") == "network"), None)
            print(json.dumps({"id": sandbox.pod_sandbox_id, "ip": status.status.network.ip,
                              "state": pb.PodSandboxState.Name(status.status.state),
                              "netns": netns}))
        elif command == "stop":
            runtime.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=args[0]), timeout=60)
        elif command == "remove":
            runtime.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=args[0]), timeout=60)
        else:
            sys.exit(__doc__)
    except grpc.RpcError as e:
        print(f"{command}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
