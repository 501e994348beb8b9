#!/usr/bin/env bash
# Scheduling throughput: three Keelson members on loopback; `keelson bench
# scheduler` registers simulated nodes and times pods from creation to
# binding. Runs each (nodes, pods) case ROUNDS times.
#
#   ROUNDS (3)  CASES ("100:1000 1000:1000")
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
cases=${CASES:-"100:1000 1000:1000"}
# shellcheck source=deploy/bench-common.sh
source deploy/bench-common.sh

for round in $(seq "$rounds"); do
  for case in $cases; do
    dir=$work/round$round-${case/:/-}
    mkdir -p "$dir"
    start_control_plane "$dir"
    echo "round $round: $("$bin" bench scheduler --kubeconfig "$dir/m0/admin.kubeconfig" --nodes "${case%%:*}" --pods "${case##*:}")"
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    pids=()
  done
done
