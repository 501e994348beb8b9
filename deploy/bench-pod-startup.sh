#!/usr/bin/env bash
# Pod and container startup (as root):
#  1. one container run to completion from the same OCI bundle (busybox,
#     `true`), by Debian's runc and by `keelson shim` (libcontainer), ROUNDS
#     times each, alternating;
#  2. `keelson bench pods`: PODS pods created one after another onto a real
#     `keelson agent` (libcontainer) beside one member, the image present,
#     each timed from creation to Running.
#
#   ROUNDS (20)  PODS (50)
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${ROUNDS:-20}
pods=${PODS:-50}
command -v runc >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends runc >/dev/null; }
# shellcheck source=deploy/bench-common.sh
source deploy/bench-common.sh

bundle=$work/bundle
mkdir -p "$bundle/rootfs/bin"
cp /bin/busybox "$bundle/rootfs/bin/"
for tool in sh true sleep; do ln -s busybox "$bundle/rootfs/bin/$tool"; done
runc spec --bundle "$bundle"
python3 - "$bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = ["true"]
json.dump(spec, open(path, "w"))
PY

echo "== one container, created, started and reaped (ms per run)"
python3 - "$bin" "$bundle" "$work" "$rounds" <<'PY'
import statistics, subprocess, sys, time
binary, bundle, work, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
times = {"runc": [], "keelson shim": []}
for i in range(rounds):
    for name in times:
        if name == "runc":
            command = ["runc", "--root", f"{work}/runc", "run", "--bundle", bundle, f"r{i}"]
        else:
            command = [binary, "shim", "--id", f"k{i}", "--bundle", bundle,
                       "--state", f"{work}/shim/{i}", "--log", f"{work}/shim/{i}.log"]
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times[name].append((time.perf_counter() - start) * 1000)
for name, samples in times.items():
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(f"{name:13} median {statistics.median(samples):6.1f}  p99 {p99:6.1f}  ({len(samples)} runs)")
ratio = statistics.median(times["keelson shim"]) / statistics.median(times["runc"])
print(f"keelson shim / runc (medians): {ratio:.2f}")
PY

echo "== pods, created one after another, to Running"
client=$(free_port); api=$(free_port)
"$bin" server --name m0 --data-dir "$work/m0" --listen-client-urls "http://127.0.0.1:$client" \
  --advertise-client-urls "http://127.0.0.1:$client" --listen-api-url "https://127.0.0.1:$api" >"$work/m0.log" 2>&1 &
pids+=($!)
wait_healthy "127.0.0.1:$client"
for _ in $(seq 200); do [[ -s $work/m0/admin.kubeconfig ]] && break; sleep 0.1; done
mkdir -p "$work/image/layer/bin"
cp /bin/busybox "$work/image/layer/bin/"
for tool in sh sleep; do ln -s busybox "$work/image/layer/bin/$tool"; done
(cd "$work/image/layer" && tar --owner=0 --group=0 -cf ../layer.tar bin)
echo '{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}' >"$work/image/config.json"
echo '[{"Config":"config.json","RepoTags":["keelson.test/busybox:bench"],"Layers":["layer.tar"]}]' >"$work/image/manifest.json"
(cd "$work/image" && tar -cf busybox.tar manifest.json config.json layer.tar)
"$bin" image import --data-dir "$work/agent" "$work/image/busybox.tar" >/dev/null
"$bin" agent --node-name bench-1 --port 0 --network none --data-dir "$work/agent" --kubeconfig "$work/m0/admin.kubeconfig" >"$work/agent.log" 2>&1 &
agent=$!
pids+=($agent)
for _ in $(seq 100); do
  KUBECONFIG=$work/m0/admin.kubeconfig kubectl get nodes 2>/dev/null | grep -q ' Ready ' && break
  sleep 0.2
done
"$bin" bench pods --kubeconfig "$work/m0/admin.kubeconfig" --image keelson.test/busybox:bench --pods "$pods"
# Let the agent stop and remove the containers before everything goes.
for _ in $(seq 100); do
  [[ -z $(ls "$work/agent/runtime/containers" 2>/dev/null) ]] && break
  sleep 0.2
done
