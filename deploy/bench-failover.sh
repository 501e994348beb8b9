#!/usr/bin/env bash
# Leader failover, Keelson against etcd (Debian's etcd-server), three members
# each on loopback: one client writes through a follower without pause;
# after WARMUP seconds the leader is killed with SIGKILL; `keelson bench
# store` reports the longest time without a successful write ("max gap"):
# the time from the kill until writes succeed again, plus one write.
# Runs ROUNDS rounds, alternating the two systems.
#
#   ROUNDS (3)  WARMUP (1.5 s)  DURATION (5 s of writing)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-3}
warmup=${WARMUP:-1.5}
duration=${DURATION:-5}
# shellcheck source=deploy/bench-common.sh
source deploy/bench-common.sh


# start SYSTEM DIR: starts three members, sets `member_pid[i]` and `client[i]`.
start() {
  local system=$1 dir=$2 i cluster=""
  for i in 0 1 2; do client[$i]=$(free_port); peer[$i]=$(free_port); done
  for i in 0 1 2; do cluster+="m$i=http://127.0.0.1:${peer[$i]},"; done
  cluster=${cluster%,}
  for i in 0 1 2; do
    local args=(--name "m$i" --data-dir "$dir/m$i"
      --listen-client-urls "http://127.0.0.1:${client[$i]}" --advertise-client-urls "http://127.0.0.1:${client[$i]}"
      --listen-peer-urls "http://127.0.0.1:${peer[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${peer[$i]}"
      --initial-cluster "$cluster")
    if [[ $system == keelson ]]; then "$bin" server "${args[@]}" --listen-api-url none >"$dir/m$i.log" 2>&1 &
    else etcd "${args[@]}" --initial-cluster-state new >"$dir/m$i.log" 2>&1 &
    fi
    member_pid[$i]=$!
    pids+=($!)
  done
  wait_healthy "127.0.0.1:${client[0]},127.0.0.1:${client[1]},127.0.0.1:${client[2]}"
}

# leader_index: which of the three members leads.
leader_index() {
  local i status
  for _ in $(seq 100); do
    for i in 0 1 2; do
      status=$(etcdctl --endpoints "127.0.0.1:${client[$i]}" endpoint status -w json 2>/dev/null) || continue
      if python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["leader"] and s["leader"]==s["header"]["member_id"] else 1)' <<<"$status"; then
        echo "$i"; return
      fi
    done
    sleep 0.1
  done
  return 1
}

echo "failover: $($bin --version) vs $(etcd --version | head -1); heartbeat/election: keelson 50/250 ms, etcd 100/1000 ms (defaults)"
for round in $(seq "$rounds"); do
  for system in keelson etcd; do
    dir=$work/$system-$round; mkdir -p "$dir"
    declare -a client peer member_pid
    start "$system" "$dir"
    leader=$(leader_index)
    follower=$(( (leader + 1) % 3 ))
    "$bin" bench store put --endpoints "127.0.0.1:${client[$follower]}" --clients 1 --conns 1 \
      --duration "$duration" --val-size 256 >"$dir/bench.out" &
    writer=$!
    sleep "$warmup"
    kill -9 "${member_pid[$leader]}"
    wait "$writer"
    printf '%-8s round %s  ' "$system" "$round"; tail -1 "$dir/bench.out"
    for i in 0 1 2; do kill "${member_pid[$i]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
  done
done
