#!/usr/bin/env bash
# Builds Keelson and starts a local store member, then shows etcdctl using it.
# Installs missing system packages first (as root).
#
#   KEELSON_HOME   where the member keeps its data and log (default /var/lib/keelson-quickstart)
#   KEELSON_PORT   client port (default 2379); metrics on KEELSON_PORT+2
set -euo pipefail
cd "$(dirname "$0")/.."

home=${KEELSON_HOME:-/var/lib/keelson-quickstart}
port=${KEELSON_PORT:-2379}
metrics_port=$((port + 2))
endpoint=127.0.0.1:$port

./deploy/install-deps.sh
echo "==> building keelson (release)"
cargo build --release --locked --quiet
bin=$PWD/target/release/keelson

mkdir -p "$home"
if [[ -f $home/keelson.pid ]] && kill -0 "$(cat "$home/keelson.pid")" 2>/dev/null; then
  echo "==> stopping the previous quickstart member"
  kill "$(cat "$home/keelson.pid")"
  while kill -0 "$(cat "$home/keelson.pid")" 2>/dev/null; do sleep 0.1; done
fi

echo "==> starting keelson server on $endpoint (data in $home/data)"
nohup "$bin" server --name quickstart --data-dir "$home/data" \
  --listen-client-urls "http://$endpoint" --advertise-client-urls "http://$endpoint" \
  --listen-metrics-urls "http://127.0.0.1:$metrics_port" >"$home/keelson.log" 2>&1 &
echo $! >"$home/keelson.pid"

export ETCDCTL_API=3
for _ in $(seq 100); do
  etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break
  kill -0 "$(cat "$home/keelson.pid")" 2>/dev/null || { cat "$home/keelson.log" >&2; exit 1; }
  sleep 0.1
done

echo "==> etcdctl against keelson"
set -x
etcdctl --endpoints "$endpoint" put greeting "hello from keelson"
etcdctl --endpoints "$endpoint" get greeting
etcdctl --endpoints "$endpoint" endpoint status -w table
set +x

kubeconfig=$home/data/admin.kubeconfig
for _ in $(seq 100); do
  [[ -f $kubeconfig ]] && break
  sleep 0.1
done
if command -v kubectl >/dev/null; then
  echo "==> kubectl against keelson"
  set -x
  KUBECONFIG=$kubeconfig kubectl get namespaces
  set +x
fi
cat <<EOT

Keelson is running (pid $(cat "$home/keelson.pid"), log $home/keelson.log).
  etcdctl --endpoints $endpoint put foo bar
  etcdctl --endpoints $endpoint watch --prefix foo
  curl -s http://127.0.0.1:$metrics_port/metrics | grep ^etcd_
  $bin bench store put range --endpoints $endpoint --total 5000
  export KUBECONFIG=$kubeconfig
  kubectl apply -f tests/manifests/ && kubectl get deployments,services
Stop it with: kill \$(cat $home/keelson.pid)
EOT
