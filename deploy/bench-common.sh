# Shared by the deploy/bench-*.sh scripts (sourced, not run): builds the
# release binary, gives the script a work directory and a list of server
# pids that are stopped and removed on exit, and the helpers below.

cargo build --release --locked --quiet
# KEELSON_BIN: another build to measure (an older commit, for a side-by-side run).
bin=${KEELSON_BIN:-$PWD/target/release/keelson}
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

# start_control_plane DIR: starts three Keelson members that also serve the
# Kubernetes API (default flags otherwise), sets `member_pid[i]`, `client[i]`
# and `api[i]`, and waits until m0 has written its admin kubeconfig.
start_control_plane() {
  local dir=$1 i cluster="" _
  for i in 0 1 2; do client[$i]=$(free_port); peer[$i]=$(free_port); api[$i]=$(free_port); done
  for i in 0 1 2; do cluster+="m$i=http://127.0.0.1:${peer[$i]},"; done
  cluster=${cluster%,}
  for i in 0 1 2; do
    "$bin" server --name "m$i" --data-dir "$dir/m$i" \
      --listen-client-urls "http://127.0.0.1:${client[$i]}" --advertise-client-urls "http://127.0.0.1:${client[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${peer[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peer[$i]}" \
      --initial-cluster "$cluster" --listen-api-url "https://127.0.0.1:${api[$i]}" >"$dir/m$i.log" 2>&1 &
    member_pid[$i]=$!
    pids+=($!)
  done
  wait_healthy "127.0.0.1:${client[0]},127.0.0.1:${client[1]},127.0.0.1:${client[2]}"
  for _ in $(seq 200); do [[ -s $dir/m0/admin.kubeconfig ]] && return 0; sleep 0.1; done
  echo "m0 did not serve the Kubernetes API" >&2
  return 1
}
