# Shared by the deploy/bench-*.sh scripts (sourced, not run): builds the
# release binary, gives the script a work directory and a list of server
# pids that are stopped and removed on exit, and the helpers below.

cargo build --release --locked --quiet
bin=$PWD/target/release/keelson
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export ETCDCTL_API=3

# free_port: a port nothing listens on right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_healthy ENDPOINTS: waits (up to 20 s) until every endpoint answers `endpoint health`.
wait_healthy() {
  local _
  for _ in $(seq 200); do
    etcdctl --endpoints "$1" endpoint health >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "servers at $1 did not become healthy" >&2
  return 1
}
