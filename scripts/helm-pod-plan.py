#!/usr/bin/env python3
"""Turn the chart's rendered cluster mode into podman commands.

Reads `helm template` output, takes the StatefulSet's `sidelog` container
(image, args, env, volume mounts, security context, memory limit) and writes

  OUT/plan.sh          bash arrays RUN_<i>=(run -d ...) for each pod, PODS=(...)
                       (container names), NODES=(...) (pod names = node ids),
                       CLIENT_PORTS/HTTP_PORTS/HEALTH_PORTS=(...) (host ports
                       on 127.0.0.1; HEALTH_PORTS empty without a health port)
  OUT/files/<volume>/  the files of every Secret/ConfigMap volume it mounts

The kubelet's parts are played here: the downward-API env (POD_NAME,
POD_NAMESPACE, POD_IP) is set per container, $(VAR) references in args are
expanded as the kubelet does, each pod gets a network alias equal to its
stable DNS name under the headless Service (and the Service's own name, as
a headless Service answers with every pod: A records only, podman's DNS
serves no SRV), and the data volume becomes a named volume per pod.

--pods N plans N pods instead of the StatefulSet's replicas: the ones
beyond are what scaling the StatefulSet up would add (same pod template,
the next ordinals).

  helm-pod-plan.py RENDERED.yaml OUTDIR [--network NET] [--client-port-base 24400]
                   [--http-port-base 24080] [--health-port-base 24700]
                   [--prefix NAME] [--pods N] [--cluster-domain cluster.local]
"""
import argparse
import base64
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
    ap.add_argument("--cluster-domain", default="cluster.local")
    ap.add_argument("--prefix", default="", help="prefix for container and volume names")
    a = ap.parse_args()

    docs = [d for d in yaml.safe_load_all(open(a.rendered)) if d]
    sts = [d for d in docs if d["kind"] == "StatefulSet"]
    if len(sts) != 1:
        sys.exit(f"want exactly one StatefulSet in {a.rendered}, found {len(sts)}")
    sts = sts[0]
    ns = sts["metadata"].get("namespace", "default")
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    (c,) = [c for c in pod["containers"] if c["name"] == "sidelog"]
    headless = spec["serviceName"]
    domain_suffix = f"{headless}.{ns}.svc.{a.cluster_domain}"
    cports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    for need in ("client", "http"):
        if need not in cports:
            sys.exit(f"the sidelog container has no port named {need!r}")
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    os.makedirs(os.path.join(a.out, "files"), exist_ok=True)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claim_names = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    mounts = []  # (kind, source, target, ro)
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

    lines = ["# generated by scripts/helm-pod-plan.py from " + a.rendered]
    names = []
    replicas = int(spec.get("replicas", 1)) if a.pods is None else a.pods
    pod_names, client_ports, http_ports, health_ports = [], [], [], []
    for i in range(replicas):
        name = f"{sts['metadata']['name']}-{i}"
        cname = a.prefix + name
        names.append(cname)
        pod_names.append(name)
        env = {"POD_NAME": name, "POD_NAMESPACE": ns, "POD_IP": ""}
        envs = []
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
                envs.append((e["name"], e["value"]))
            elif e.get("valueFrom", {}).get("fieldRef"):
                envs.append((e["name"], env.get(e["name"], "")))
            else:
                sys.exit(f"env {e['name']}: unsupported valueFrom")

        def expand(s):
            return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), s)

        args = [expand(x) for x in c.get("args", [])]
        run = ["run", "-d", "--name", cname, "--hostname", name,
               "--network", a.network,
               "--network-alias", f"{name}.{domain_suffix}",
               "--network-alias", domain_suffix,
               "-p", f"127.0.0.1:{a.client_port_base + i}:{cports['client']}",
               "-p", f"127.0.0.1:{a.http_port_base + i}:{cports['http']}",
               "--stop-timeout", str(grace)]
        client_ports.append(a.client_port_base + i)
        http_ports.append(a.http_port_base + i)
        if "health" in cports:
            run += ["-p", f"127.0.0.1:{a.health_port_base + i}:{cports['health']}"]
            health_ports.append(a.health_port_base + i)
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
                run += ["-v", f"{a.prefix}{name}-{src}:{target}"]
            else:
                run += ["-v", f"{src}:{target}:ro"]
        if c.get("command"):
            run += ["--entrypoint", c["command"][0]]
        run.append(c["image"])
        run += args
        lines.append(f"RUN_{i}=(" + " ".join(shlex.quote(x) for x in run) + ")")
    lines.append("PODS=(" + " ".join(shlex.quote(n) for n in names) + ")")
    lines.append("NODES=(" + " ".join(shlex.quote(n) for n in pod_names) + ")")
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
