#!/usr/bin/env python3
"""Turn the chart's rendered pods into podman commands.

Two kinds of workload:

StatefulSet (cluster mode, the default): reads `helm template` output,
takes the StatefulSet's `sidelog` container (image, args, env, volume
mounts, security context, memory limit) and writes

  OUT/plan.sh          bash arrays RUN_<i>=(run -d ...) for each pod, PODS=(...)
                       (container names), NODES=(...) (pod names = node ids),
                       NODE_OF=(...) (the simulated Kubernetes node of each pod),
                       CLIENT_PORTS/HTTP_PORTS/HEALTH_PORTS=(...) (host ports
                       on 127.0.0.1; HEALTH_PORTS empty without a health port)
  OUT/files/<volume>/  the files of every Secret/ConfigMap volume it mounts

Deployment (--deployment NAME, sidecar mode: the app chart's Deployment
whose pods carry the `sidelog` native sidecar, an initContainers entry with
restartPolicy Always): a Deployment's pods have names, IPs and data that
nobody knows in advance, so plan.sh holds one template instead,

  DEPLOY_TEMPLATE=(run -d ...)  with the tokens @NAME@ (pod name = node id),
                       @CNAME@ (container name), @IP@ (pod IP), @NODE@ (its
                       Kubernetes node) and @HEALTH_PORT@ (host port of the
                       health port) for the caller to replace per pod
  DEPLOY_PREFIX=...    <deployment>-<pod-template-hash>: a pod's name is this
                       plus "-" and 5 random characters, as a ReplicaSet does
  DEAD_MEMBER_TIMEOUT, LEAVE_ON_TERMINATE  the rendered flags' values

The kubelet's parts are played here: the downward-API env (fieldRef
metadata.name, metadata.namespace, status.podIP, spec.nodeName) is set per
container, $(VAR) references in args are expanded as the kubelet does, the
pods are spread round-robin over --nodes simulated Kubernetes nodes
(helm-node-<k>: what spec.nodeName, and so the chart's default failure
domain, says), each StatefulSet pod gets a network alias equal to its stable
DNS name under the headless Service, every pod gets the headless Service's
own name (a headless Service answers with every pod: A records only,
podman's DNS serves no SRV), and the data volume becomes a named volume per
pod (a new, empty one per Deployment pod: its emptyDir).

--pods N plans N StatefulSet pods instead of its replicas: the ones beyond
are what scaling the StatefulSet up would add (same pod template, the next
ordinals).

  helm-pod-plan.py RENDERED.yaml OUTDIR [--network NET] [--client-port-base 24400]
                   [--http-port-base 24080] [--health-port-base 24700]
                   [--prefix NAME] [--pods N] [--nodes 3] [--cluster-domain cluster.local]
                   [--deployment NAME]
"""
import argparse
import base64
import hashlib
import os
import re
import shlex
import sys

import yaml


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("out")
    ap.add_argument("--network", default="sidelog-helm-test")
    ap.add_argument("--client-port-base", type=int, default=24400)
    ap.add_argument("--http-port-base", type=int, default=24080)
    ap.add_argument("--health-port-base", type=int, default=24700)
    ap.add_argument("--pods", type=int, default=None, help="pods to plan [default: the StatefulSet's replicas]")
    ap.add_argument("--nodes", type=int, default=3, help="simulated Kubernetes nodes (spec.nodeName) [default: 3]")
    ap.add_argument("--cluster-domain", default="cluster.local")
    ap.add_argument("--prefix", default="", help="prefix for container and volume names")
    ap.add_argument("--deployment", default=None, metavar="NAME",
                    help="plan the sidecar of Deployment NAME (a template, see above)")
    a = ap.parse_args()

    docs = [d for d in yaml.safe_load_all(open(a.rendered)) if d]
    if a.deployment:
        deps = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == a.deployment]
        if len(deps) != 1:
            sys.exit(f"no Deployment {a.deployment} in {a.rendered}")
        work = deps[0]
        pod = work["spec"]["template"]["spec"]
        side = [c for c in pod.get("initContainers", []) if c["name"] == "sidelog"]
        if len(side) != 1 or side[0].get("restartPolicy") != "Always":
            sys.exit(f"Deployment {a.deployment} has no native sidecar named sidelog")
        c = side[0]
    else:
        sts = [d for d in docs if d["kind"] == "StatefulSet"]
        if len(sts) != 1:
            sys.exit(f"want exactly one StatefulSet in {a.rendered}, found {len(sts)}")
        work = sts[0]
        pod = work["spec"]["template"]["spec"]
        (c,) = [c for c in pod["containers"] if c["name"] == "sidelog"]
    ns = work["metadata"].get("namespace", "default")
    spec = work["spec"]
    args_raw = c.get("args", [])
    dns_names = [x.split("=", 1)[1] for x in args_raw if x.startswith("--dns-name=")]
    if a.deployment:
        if not dns_names:
            sys.exit("a Deployment's sidecar needs --dns-name (discovery dns)")
        headless_fqdn = dns_names[0]
    else:
        headless_fqdn = f"{spec['serviceName']}.{ns}.svc.{a.cluster_domain}"
    cports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    needed = ("health",) if a.deployment else ("client", "http")
    for need in needed:
        if need not in cports:
            sys.exit(f"the sidelog container has no port named {need!r}")
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    os.makedirs(os.path.join(a.out, "files"), exist_ok=True)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claim_names = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    mounts = []  # (kind, source, target)
    for m in c.get("volumeMounts", []):
        name, target = m["name"], m["mountPath"]
        if name in claim_names or ("emptyDir" in volumes.get(name, {})):
            mounts.append(("volume", name, target))
            continue
        v = volumes[name]
        if "secret" in v:
            obj = by_name.get(("Secret", v["secret"]["secretName"]))
            if obj is None:
                sys.exit(f"volume {name}: Secret {v['secret']['secretName']} is not in the rendered output "
                         "(existingSecret / cert-manager cannot run under podman)")
            files = {k: base64.b64decode(val) for k, val in (obj.get("data") or {}).items()}
        elif "configMap" in v:
            obj = by_name.get(("ConfigMap", v["configMap"]["name"]))
            if obj is None:
                sys.exit(f"volume {name}: ConfigMap {v['configMap']['name']} is not in the rendered output")
            files = {k: val.encode() for k, val in (obj.get("data") or {}).items()}
        else:
            sys.exit(f"volume {name}: unsupported volume type {list(v)}")
        d = os.path.join(a.out, "files", name)
        os.makedirs(d, exist_ok=True)
        for k, data in files.items():
            p = os.path.join(d, k)
            with open(p, "wb") as f:
                f.write(data)
            # The kubelet makes them readable through fsGroup; here: world-readable test copies.
            os.chmod(p, 0o444)
        mounts.append(("bind", os.path.abspath(d), target))

    sc = c.get("securityContext", {})
    psc = pod.get("securityContext", {})
    user = sc.get("runAsUser", psc.get("runAsUser"))
    group = sc.get("runAsGroup", psc.get("runAsGroup"))
    mem = (c.get("resources", {}).get("limits") or {}).get("memory")
    grace = pod.get("terminationGracePeriodSeconds", 30)

    def podman_mem(q):
        m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(q))
        if not m:
            return None
        return m.group(1) + {"Ki": "k", "Mi": "m", "Gi": "g", None: ""}[m.group(2)]

    # What the kubelet puts in a downward-API env var.
    def field(path, pod_name, pod_ip, node):
        known = {"metadata.name": pod_name, "metadata.namespace": ns, "status.podIP": pod_ip,
                 "spec.nodeName": node}
        if path not in known:
            sys.exit(f"downward API field {path!r} is not simulated here")
        return known[path]

    def run_args(cname, pod_name, pod_ip, node, ports, aliases, volume_prefix):
        """The `podman run` arguments of one pod (strings may hold tokens)."""
        env = {}
        envs = []
        for e in c.get("env", []):
            if "value" in e:
                val = e["value"]
            elif e.get("valueFrom", {}).get("fieldRef"):
                val = field(e["valueFrom"]["fieldRef"]["fieldPath"], pod_name, pod_ip, node)
            else:
                sys.exit(f"env {e['name']}: unsupported valueFrom")
            env[e["name"]] = val
            envs.append((e["name"], val))

        def expand(s):
            return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)

        run = ["run", "-d", "--name", cname, "--hostname", pod_name, "--network", a.network]
        if a.deployment:
            run += ["--ip", pod_ip]
        for al in aliases:
            run += ["--network-alias", al]
        for host_port, container_port in ports:
            run += ["-p", f"127.0.0.1:{host_port}:{container_port}"]
        run += ["--stop-timeout", str(grace)]
        if sc.get("readOnlyRootFilesystem"):
            run.append("--read-only")
        for cap in (sc.get("capabilities") or {}).get("drop", []):
            run += ["--cap-drop", cap]
        if sc.get("allowPrivilegeEscalation") is False:
            run += ["--security-opt", "no-new-privileges"]
        if user is not None:
            run += ["--user", f"{user}:{group if group is not None else user}"]
        if mem and podman_mem(mem):
            run += ["--memory", podman_mem(mem)]
        for k, v in envs:
            run += ["-e", f"{k}={v}"]
        for kind, src, target in mounts:
            if kind == "volume":
                # A Deployment pod's emptyDir: <cname>-data, which cleanup removes.
                vol = f"{volume_prefix}-data" if a.deployment else f"{volume_prefix}-{src}"
                run += ["-v", f"{vol}:{target}"]
            else:
                run += ["-v", f"{src}:{target}:ro"]
        if c.get("command"):
            run += ["--entrypoint", c["command"][0]]
        run.append(c["image"])
        run += [expand(x) for x in args_raw]
        return run

    def flag(name, default=""):
        vals = [x.split("=", 1)[1] for x in args_raw if x.startswith(f"--{name}=")]
        return vals[-1] if vals else default

    lines = ["# generated by scripts/helm-pod-plan.py from " + a.rendered]
    if a.deployment:
        # A ReplicaSet names its pods <deployment>-<pod-template-hash>-<5 random>.
        h = hashlib.sha256(yaml.safe_dump(spec["template"]).encode()).hexdigest()
        tmpl_hash = "".join("bcdfghjklmnpqrstvwxz2456789"[int(h[i:i + 2], 16) % 27] for i in range(0, 20, 2))
        # The data volume is named after the container, so cleanup finds it as <cname>-data.
        run = run_args("@CNAME@", "@NAME@", "@IP@", "@NODE@", [("@HEALTH_PORT@", cports["health"])],
                       [headless_fqdn], "@CNAME@")
        lines.append("DEPLOY_TEMPLATE=(" + " ".join(shlex.quote(x) for x in run) + ")")
        lines.append(f"DEPLOY_PREFIX={shlex.quote(a.deployment + '-' + tmpl_hash)}")
        lines.append("NODE_NAMES=(" + " ".join(f"helm-node-{k}" for k in range(a.nodes)) + ")")
        lines.append(f"DEAD_MEMBER_TIMEOUT={shlex.quote(flag('dead-member-timeout'))}")
        lines.append(f"LEAVE_ON_TERMINATE={shlex.quote(flag('leave-on-terminate'))}")
        lines.append(f"IMAGE={shlex.quote(c['image'])}")
        lines.append(f"GRACE={int(grace)}")
        with open(os.path.join(a.out, "plan.sh"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print(f"image: {c['image']}")
        print(f"podman {' '.join(shlex.quote(x) for x in run)}")
        return 0

    names = []
    replicas = int(spec.get("replicas", 1)) if a.pods is None else a.pods
    pod_names, node_of, client_ports, http_ports, health_ports = [], [], [], [], []
    for i in range(replicas):
        name = f"{work['metadata']['name']}-{i}"
        cname = a.prefix + name
        node = f"helm-node-{i % a.nodes}"
        names.append(cname)
        pod_names.append(name)
        node_of.append(node)
        ports = [(a.client_port_base + i, cports["client"]), (a.http_port_base + i, cports["http"])]
        client_ports.append(a.client_port_base + i)
        http_ports.append(a.http_port_base + i)
        if "health" in cports:
            ports.append((a.health_port_base + i, cports["health"]))
            health_ports.append(a.health_port_base + i)
        run = run_args(cname, name, "", node, ports, [f"{name}.{headless_fqdn}", headless_fqdn], a.prefix + name)
        lines.append(f"RUN_{i}=(" + " ".join(shlex.quote(x) for x in run) + ")")
    lines.append("PODS=(" + " ".join(shlex.quote(n) for n in names) + ")")
    lines.append("NODES=(" + " ".join(shlex.quote(n) for n in pod_names) + ")")
    lines.append("NODE_OF=(" + " ".join(shlex.quote(n) for n in node_of) + ")")
    for var, ports in (("CLIENT_PORTS", client_ports), ("HTTP_PORTS", http_ports), ("HEALTH_PORTS", health_ports)):
        lines.append(f"{var}=(" + " ".join(str(p) for p in ports) + ")")
    lines.append(f"IMAGE={shlex.quote(c['image'])}")
    lines.append(f"GRACE={int(grace)}")
    with open(os.path.join(a.out, "plan.sh"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"image: {c['image']}")
    for i in range(replicas):
        print(f"podman {lines[i + 1].split('=(', 1)[1][:-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
