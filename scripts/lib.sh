# shellcheck shell=bash
# Shared helpers for the scripts in this folder. Source it, don't run it:
#   . "$(dirname "$0")/lib.sh"
# It sets REPO_ROOT and defines small, idempotent install and logging helpers.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where the e2e Python venv lives (created by .ci/run or by hand, see tests/e2e).
E2E_VENV="${E2E_VENV:-$REPO_ROOT/target/e2e-venv}"

# log MSG...: progress message on stderr, prefixed by the calling script's name.
log() { echo "[$(basename "$0")] $*" >&2; }
# die MSG...: error message on stderr, then exit 1.
die() { echo "[$(basename "$0")] ERROR: $*" >&2; exit 1; }

# have CMD: true when CMD is on PATH.
have() { command -v "$1" >/dev/null 2>&1; }

# apt_install PKG...: install the Debian packages that are not installed yet.
# Runs `apt-get update` at most once per process, and only when something is
# missing, so calling it again is cheap. Needs root and apt-get.
_APT_UPDATED=0
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    have apt-get || die "need Debian packages (${missing[*]}) but apt-get is not available; install them by hand"
    [ "$(id -u)" -eq 0 ] || die "need Debian packages (${missing[*]}); run as root or install them by hand"
    log "installing Debian packages: ${missing[*]}"
    if [ "$_APT_UPDATED" -eq 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
        _APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
}

# container_engine: print "podman" or "docker", whichever works (podman first),
# or return 1 when neither does. Podman is installed from Debian when it is
# missing and docker does not work either (root + apt-get only). Podman is
# always driven through scripts/podman.sh, which adds the flags this sandbox
# needs. Set CONTAINER_ENGINE=podman|docker to skip the detection.
container_engine() {
    if [ -n "${CONTAINER_ENGINE:-}" ]; then
        echo "$CONTAINER_ENGINE"; return 0
    fi
    if have podman && have apt-get && [ "$(id -u)" -eq 0 ]; then
        # A podman without netavark/aardvark-dns runs containers but its
        # networks answer no DNS, so pods cannot find each other by name (what
        # the chart and the DNS-discovery test rely on): install the whole stack.
        ( apt_install podman runc netavark aardvark-dns ) >&2 || true
    fi
    if have podman && "$REPO_ROOT/scripts/podman.sh" info >/dev/null 2>&1; then
        echo podman; return 0
    fi
    if have docker && timeout 30 docker info >/dev/null 2>&1; then
        echo docker; return 0
    fi
    if ! have podman && have apt-get && [ "$(id -u)" -eq 0 ]; then
        # Installing may fail (no network to the Debian mirror, say): then we
        # simply have no engine, which the caller reports.
        ( apt_install podman runc netavark aardvark-dns ) >&2 || true
        if have podman && "$REPO_ROOT/scripts/podman.sh" info >/dev/null 2>&1; then
            echo podman; return 0
        fi
    fi
    return 1
}

# engine CMD...: run a container-engine command with the engine chosen by
# container_engine (held in $ENGINE).
engine() {
    case "${ENGINE:?ENGINE not set; call container_engine first}" in
        podman) "$REPO_ROOT/scripts/podman.sh" "$@" ;;
        docker) docker "$@" ;;
        *) die "unknown container engine '$ENGINE'" ;;
    esac
}
