#!/usr/bin/env bash
# Runs `keelson bench store` against a Keelson member and a real etcd
# (Debian's etcd-server) side by side: both on loopback, data on the same
# disk, the workloads alternating between them for ROUNDS rounds so drift on a
# noisy machine hits both alike. Prints every report line.
#
#   ROUNDS (3)  TOTAL (10000)  CLIENTS (16)  CONNS (4)  VAL_SIZE (256)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
args=(--total "${TOTAL:-10000}" --clients "${CLIENTS:-16}" --conns "${CONNS:-4}" --val-size "${VAL_SIZE:-256}" --key-space 10000)
cargo build --release --locked --quiet
bin=$PWD/target/release/keelson
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kport=$(free_port); eport=$(free_port); epeer=$(free_port)

"$bin" server --name bench --data-dir "$work/keelson" \
  --listen-client-urls "http://127.0.0.1:$kport" --advertise-client-urls "http://127.0.0.1:$kport" \
  >"$work/keelson.log" 2>&1 &
pids+=($!)
etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$eport" --advertise-client-urls "http://127.0.0.1:$eport" \
  --listen-peer-urls "http://127.0.0.1:$epeer" --initial-advertise-peer-urls "http://127.0.0.1:$epeer" \
  --initial-cluster "bench=http://127.0.0.1:$epeer" >"$work/etcd.log" 2>&1 &
pids+=($!)
for endpoint in "127.0.0.1:$kport" "127.0.0.1:$eport"; do
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break
    sleep 0.1
  done
done

echo "keelson $($bin --version | cut -d' ' -f2) vs $(etcd --version | head -1)"
for round in $(seq "$rounds"); do
  for workload in put range txn watch-latency; do
    for target in keelson:$kport etcd:$eport; do
      printf '%-8s round %s  ' "${target%%:*}" "$round"
      "$bin" bench store "$workload" --endpoints "127.0.0.1:${target#*:}" "${args[@]}" | tail -1
    done
  done
done
