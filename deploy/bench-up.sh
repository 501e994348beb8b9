#!/usr/bin/env bash
# Measures a local cluster: the time `keelson up --nodes 2` takes until
# every node is Ready (RUNS runs, each profile deleted after), then the
# resident memory of every component of one profile running the bank
# scenario, after IDLE seconds idle. Run as root; prints a table.
#
#   RUNS (default 5), IDLE (default 60), KEELSON_BIN (another build to measure)
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-5}
idle=${IDLE:-60}
cargo build --release --locked --quiet
bin=${KEELSON_BIN:-$PWD/target/release/keelson}
export KEELSON_HOME
KEELSON_HOME=$(mktemp -d)
export KUBECONFIG=$KEELSON_HOME/kubeconfig
profile=bench-up
cleanup() {
  [[ -d $KEELSON_HOME/$profile ]] && "$bin" delete -p "$profile" >/dev/null 2>&1
  rm -rf "$KEELSON_HOME"
}
trap cleanup EXIT

echo "==> keelson up --nodes 2, $runs runs (ms until every node is Ready)"
times=()
for _ in $(seq "$runs"); do
  start=$(date +%s%N)
  "$bin" up --nodes 2 -p "$profile" >/dev/null
  times+=($((($(date +%s%N) - start) / 1000000)))
  "$bin" delete -p "$profile" >/dev/null
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "up: min %d ms, median %d ms, max %d ms\n", a[1], a[int((NR+1)/2)], a[NR]}'

echo "==> memory with the bank scenario running, after ${idle}s idle"
"$bin" up --nodes 2 -p "$profile" >/dev/null
if [[ ! -f target/bank-images/bank-web-1.0.tar ]]; then
  ./deploy/images/build.sh target/bank-images >/dev/null
fi
"$bin" image load target/bank-images/*.tar -p "$profile" >/dev/null
kubectl apply -f deploy >/dev/null
sleep "$idle"
kubectl get pods -o wide
"$bin" status -p "$profile" | awk '/^(type|memory):/ || NF == 1 && !/:/ {print}' |
  paste - - - | awk -F'\t' '{printf "%-16s %-40s %s\n", $1, $2, $3}' || true
