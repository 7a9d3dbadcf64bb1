# Sourced by the README's test command (and so by .ci/run): the real parts the serving-image
# tests need, started once per run and shared by every test.
#   - dockerd from Debian's docker.io, on its own socket, data-root and exec-root under a temp
#     directory, with no iptables rules, no bridge and no IP forwarding (containers run with
#     --network none): DOCKER_HOST points at it, and it stops when the calling shell exits;
#   - a Debian bookworm root filesystem with python3, made by mmdebstrap from Debian's packages
#     (reproducible under SOURCE_DATE_EPOCH), kept at $KILN_TEST_BASE_TAR between runs.
# Root is needed for both (CI runs as root). Nothing is pulled from a public registry.
KILN_ENGINE_DIR=$(mktemp -d /tmp/kiln-engine.XXXXXX)
dockerd --host "unix://$KILN_ENGINE_DIR/engine.sock" --data-root "$KILN_ENGINE_DIR/root" \
    --exec-root "$KILN_ENGINE_DIR/exec" --pidfile "$KILN_ENGINE_DIR/pid" \
    --iptables=false --ip6tables=false --ip-forward=false --bridge=none \
    >"$KILN_ENGINE_DIR/dockerd.log" 2>&1 &
export DOCKER_HOST="unix://$KILN_ENGINE_DIR/engine.sock"
trap 'kill "$(cat "$KILN_ENGINE_DIR/pid" 2>/dev/null)" 2>/dev/null; sleep 1; rm -rf "$KILN_ENGINE_DIR"' EXIT
i=0
until docker version >/dev/null 2>&1 || [ $i -ge 60 ]; do i=$((i + 1)); sleep 0.5; done
docker version >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -5 "$KILN_ENGINE_DIR/dockerd.log"; }
export KILN_TEST_BASE_TAR="${KILN_TEST_BASE_TAR:-/var/cache/modelkiln-ci/debian-bookworm-python3.tar}"
if [ ! -s "$KILN_TEST_BASE_TAR" ]; then
    mkdir -p "$(dirname "$KILN_TEST_BASE_TAR")"
    .venv/bin/python -c 'import sys; from pathlib import Path; from modelkiln.artifacts.oci.rootfs import mmdebstrap; mmdebstrap(Path(sys.argv[1] + ".part"), "bookworm", ("python3", "ca-certificates"))' "$KILN_TEST_BASE_TAR" \
        && mv "$KILN_TEST_BASE_TAR.part" "$KILN_TEST_BASE_TAR"
fi
