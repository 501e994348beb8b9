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
# shellcheck source=deploy/bench-common.sh
source deploy/bench-common.sh

kport=$(free_port); eport=$(free_port); epeer=$(free_port)

"$bin" server --name bench --data-dir "$work/keelson" \
  --listen-client-urls "http://127.0.0.1:$kport" --advertise-client-urls "http://127.0.0.1:$kport" \
  --listen-api-url none >"$work/keelson.log" 2>&1 &
pids+=($!)
etcd --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$eport" --advertise-client-urls "http://127.0.0.1:$eport" \
  --listen-peer-urls "http://127.0.0.1:$epeer" --initial-advertise-peer-urls "http://127.0.0.1:$epeer" \
  --initial-cluster "bench=http://127.0.0.1:$epeer" >"$work/etcd.log" 2>&1 &
pids+=($!)
wait_healthy "127.0.0.1:$kport"
wait_healthy "127.0.0.1:$eport"

echo "keelson $($bin --version | cut -d' ' -f2) vs $(etcd --version | head -1)"
for round in $(seq "$rounds"); do
  for workload in put range txn watch-latency; do
    for target in keelson:$kport etcd:$eport; do
      printf '%-8s round %s  ' "${target%%:*}" "$round"
      "$bin" bench store "$workload" --endpoints "127.0.0.1:${target#*:}" "${args[@]}" | tail -1
    done
  done
done
