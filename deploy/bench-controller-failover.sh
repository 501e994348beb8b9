#!/usr/bin/env bash
# Controller failover: three Keelson members on loopback with their default
# timings; the member holding the controllers' Lease is killed with SIGKILL
# and the time until another member holds it is measured (polled with
# kubectl through a survivor, so it includes up to one poll interval).
# Runs ROUNDS rounds, each on a fresh cluster.
#
#   ROUNDS (5)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-5}
# shellcheck source=deploy/bench-common.sh
source deploy/bench-common.sh

lease() {
  kubectl --kubeconfig "$1" --request-timeout=2s get lease -n kube-system keelson-controller-manager \
    -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true
}

for round in $(seq "$rounds"); do
  dir=$work/round$round
  mkdir -p "$dir"
  start_control_plane "$dir"
  holder=""
  for _ in $(seq 200); do
    holder=$(lease "$dir/m0/admin.kubeconfig")
    [[ -n $holder ]] && break
    sleep 0.1
  done
  victim=${holder%%_*}
  victim=${victim#m}
  survivor=$(( (victim + 1) % 3 ))
  # Let the holder renew a few times, as in steady state.
  sleep 2
  kill -9 "${member_pid[$victim]}"
  wait "${member_pid[$victim]}" 2>/dev/null || true
  killed=$(date +%s.%N)
  while :; do
    now=$(lease "$dir/m$survivor/admin.kubeconfig")
    if [[ -n $now && $now != "$holder" ]]; then break; fi
    sleep 0.05
  done
  took=$(python3 -c "import sys; print(f\"{float(sys.argv[1]) - float(sys.argv[2]):.2f}\")" "$(date +%s.%N)" "$killed")
  echo "round $round: killed m$victim (held the lease); ${now%%_*} took over after ${took} s"
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
done
