#!/usr/bin/env bash
# Three Keelson members against three etcd members (Debian's etcd-server),
# side by side on loopback, driven by the same client: `keelson bench store`,
# which speaks only the etcd API. Workloads alternate between the two
# clusters for ROUNDS rounds, at 1 client and at 100 clients over 10
# connections, with 256-byte values: puts, linearizable and serializable
# ranges. Prints every report line.
#
#   ROUNDS (2)  TOTAL_1 (2000 ops at 1 client)  TOTAL_100 (20000 ops at 100 clients)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-2}
# shellcheck source=deploy/bench-common.sh
source deploy/bench-common.sh

declare -A client peer
for system in keelson etcd; do
  for i in 0 1 2; do
    client[$system$i]=$(free_port)
    peer[$system$i]=$(free_port)
  done
done
cluster() { echo "m0=http://127.0.0.1:${peer[${1}0]},m1=http://127.0.0.1:${peer[${1}1]},m2=http://127.0.0.1:${peer[${1}2]}"; }
endpoints() { echo "127.0.0.1:${client[${1}0]},127.0.0.1:${client[${1}1]},127.0.0.1:${client[${1}2]}"; }

for i in 0 1 2; do
  "$bin" server --name m$i --data-dir "$work/keelson$i" \
    --listen-client-urls "http://127.0.0.1:${client[keelson$i]}" --advertise-client-urls "http://127.0.0.1:${client[keelson$i]}" \
    --listen-peer-urls "http://127.0.0.1:${peer[keelson$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peer[keelson$i]}" \
    --initial-cluster "$(cluster keelson)" --listen-api-url none >"$work/keelson$i.log" 2>&1 &
  pids+=($!)
  etcd --name m$i --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:${client[etcd$i]}" --advertise-client-urls "http://127.0.0.1:${client[etcd$i]}" \
    --listen-peer-urls "http://127.0.0.1:${peer[etcd$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peer[etcd$i]}" \
    --initial-cluster "$(cluster etcd)" --initial-cluster-state new >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
done
wait_healthy "$(endpoints keelson)"
wait_healthy "$(endpoints etcd)"

echo "keelson $($bin --version | cut -d' ' -f2) (3 members) vs $(etcd --version | head -1) (3 members)"
for round in $(seq "$rounds"); do
  for load in "1 1 ${TOTAL_1:-2000}" "100 10 ${TOTAL_100:-20000}"; do
    read -r clients conns total <<<"$load"
    for workload in "put" "range --consistency l" "range --consistency s"; do
      for system in keelson etcd; do
        printf '%-8s round %s clients %3s  %-22s ' "$system" "$round" "$clients" "$workload"
        # shellcheck disable=SC2086
        "$bin" bench store $workload --endpoints "$(endpoints $system)" --clients "$clients" --conns "$conns" \
          --total "$total" --val-size 256 --key-space 1000 | tail -1
      done
    done
  done
done
