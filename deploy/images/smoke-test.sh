#!/usr/bin/env bash
# Runs the bank images the way a node would, without a cluster: each image
# unpacked from its tarball into an OCI bundle and started with runc, all
# in one network namespace of its own that has loopback and nothing else
# (like one pod; no route anywhere). Then checks, from inside it:
#
#   web before database: /healthz 200, /ready 503 (the app retries with backoff)
#   database up:         /ready 200, GET / lists the seeded accounts and the hostname
#   POST /accounts, POST /transfer (and an overdraft refused, nothing moved)
#   200 concurrent transfers: the total is kept, no balance goes negative
#   `sh` and the `mariadb` client inside the containers (as `kubectl exec` would)
#   the interest job: pays once, a second run pays nothing
#   database restarted on the same data directory: nothing lost, no second init
#   SIGTERM stops the web server at once
#
# Usage (as root; needs runc and ip):
#   deploy/images/smoke-test.sh [IMAGES_DIR]     (default: target/bank-images)
# The containers get runc's default capabilities (AUDIT_WRITE, KILL,
# NET_BIND_SERVICE: what Keelson's runtime gives), so mariadbd runs as root;
# BANK_SMOKE_DB_CAPS=docker gives the database Docker's default set
# instead, and the entrypoint then runs mariadbd as user mysql.
# Everything it makes (containers, namespace, bundles) is removed on exit.
set -euo pipefail
export LC_ALL=C

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
images=${1:-$script_dir/../../target/bank-images}
netns=${BANK_NETNS:-bankcheck}
py=/usr/bin/python3

say() { echo "==> $*"; }
die() {
  echo "smoke-test.sh: error: $*" >&2
  exit 1
}

[[ $(id -u) -eq 0 ]] || die "run as root (runc and ip netns need it)"
command -v runc >/dev/null || die "runc is not installed (apt-get install -y runc)"
command -v ip >/dev/null || die "ip is not installed (apt-get install -y iproute2)"
for image in bank-web-1.0 mariadb-10.11; do
  [[ -f $images/$image.tar ]] || die "$images/$image.tar is missing; run deploy/images/build.sh first"
done
if ip netns list | grep -qw "^$netns"; then
  die "network namespace $netns exists already; delete it or set BANK_NETNS"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/bank-smoke.XXXXXX")
state=$work/runc-state
containers=()
made_netns=""
cgroup=bank-smoke-$$
started=$SECONDS

cleanup() {
  local status=$? id
  if ((status != 0)); then
    for id in "${containers[@]}"; do
      if [[ -f $work/$id.log ]]; then
        echo "---- last lines of $id's output"
        tail -n 30 "$work/$id.log"
      fi
    done
  fi
  for id in "${containers[@]}"; do
    runc --root "$state" kill "$id" KILL >/dev/null 2>&1 || true
    runc --root "$state" delete --force "$id" >/dev/null 2>&1 || true
  done
  if [[ -n $made_netns ]]; then ip netns delete "$netns" || true; fi
  # runc removes each container's cgroup, not the parent they share.
  for id in /sys/fs/cgroup/"$cgroup" /sys/fs/cgroup/*/"$cgroup"; do
    if [[ -d $id ]]; then rmdir "$id" 2>/dev/null || true; fi
  done
  rm -rf "$work"
  if ((status == 0)); then say "cleaned up"; else echo "smoke-test.sh: FAILED (cleaned up)" >&2; fi
}
trap cleanup EXIT

# oci_tool unpack IMAGE_TAR ROOTFS | spec IMAGE_TAR BUNDLE ID NETNS [ENV=...] [--mount SRC:DST] [-- ARGS...]
oci_tool() {
  "$py" - "$@" <<'PY'
import json, os, subprocess, sys, tarfile, tempfile

def image(tar_path):
    """(config, [layer paths]) of the one image in an OCI layout tarball, unpacked to a temp dir."""
    scratch = tempfile.mkdtemp(dir=os.environ["WORK"])
    with tarfile.open(tar_path) as archive:
        archive.extractall(scratch)
    blob = lambda d: os.path.join(scratch, "blobs", "sha256", d.split(":", 1)[1])
    index = json.load(open(os.path.join(scratch, "index.json")))
    manifest = json.load(open(blob(index["manifests"][0]["digest"])))
    config = json.load(open(blob(manifest["config"]["digest"])))
    return config, [blob(layer["digest"]) for layer in manifest["layers"]]

command = sys.argv[1]
if command == "unpack":
    tar_path, rootfs = sys.argv[2:4]
    os.makedirs(rootfs, exist_ok=True)
    _, layers = image(tar_path)
    for layer in layers:  # these images have no whiteouts: plain extraction in order
        subprocess.run(["tar", "-xzf", layer, "-C", rootfs, "--numeric-owner"], check=True)
elif command == "spec":
    tar_path, bundle, cid, netns = sys.argv[2:6]
    rest = sys.argv[6:]
    config = image(tar_path)[0]["config"]
    extra_env, mounts, args, capabilities = [], [], None, None
    while rest:
        item = rest.pop(0)
        if item == "--":
            args, rest = rest, []
        elif item == "--docker-capabilities":
            capabilities = ["CAP_" + c for c in ("CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID "
                            "SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE").split()]
        elif item == "--mount":
            source, destination = rest.pop(0).split(":", 1)
            mounts.append({"destination": destination, "type": "bind", "source": source,
                           "options": ["rbind", "rw"]})
        else:
            extra_env.append(item)
    subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
    path = os.path.join(bundle, "config.json")
    spec = json.load(open(path))
    process = spec["process"]
    process["terminal"] = False
    process["args"] = args or (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
    process["env"] = (config.get("Env") or []) + extra_env + [f"HOSTNAME={cid}"]
    process["cwd"] = config.get("WorkingDir") or "/"
    user = (config.get("User") or "0").split(":")
    process["user"] = {"uid": int(user[0]), "gid": int(user[1] if len(user) > 1 else 0)}
    if capabilities:
        process["capabilities"] = {kind: capabilities for kind in ("bounding", "effective", "permitted")}
    spec["root"] = {"path": "rootfs", "readonly": False}
    spec["hostname"] = cid
    spec["mounts"] += mounts
    for namespace in spec["linux"]["namespaces"]:
        if namespace["type"] == "network":
            namespace["path"] = f"/run/netns/{netns}"
    spec["linux"]["cgroupsPath"] = f"/{os.environ['CGROUP']}/{cid}"
    json.dump(spec, open(path, "w"), indent=1)
PY
}

# bundle IMAGE ID [spec arguments...]: an OCI bundle for one container.
bundle() {
  local image=$1 id=$2
  shift 2
  rm -rf "${work:?}/$id"
  mkdir -p "$work/$id"
  oci_tool unpack "$images/$image.tar" "$work/$id/rootfs"
  oci_tool spec "$images/$image.tar" "$work/$id" "$id" "$netns" "$@"
}

# start ID: runs the bundle's container in the background, output to ID.log.
start() {
  local id=$1
  containers+=("$id")
  runc --root "$state" run --detach --bundle "$work/$id" "$id" </dev/null >>"$work/$id.log" 2>&1
  say "started $id ($(runc --root "$state" state "$id" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["status"])'))"
}

# stop ID: SIGTERM, then waits (at most 30 s) for it to exit; prints the seconds it took.
stop() {
  local id=$1 begun=$SECONDS
  runc --root "$state" kill "$id" TERM
  while [[ $(runc --root "$state" state "$id" 2>/dev/null | "$py" -c 'import json,sys; print(json.load(sys.stdin)["status"])') == running ]]; do
    ((SECONDS - begun < 30)) || die "$id did not stop within 30s of SIGTERM"
    sleep 0.2
  done
  runc --root "$state" delete "$id"
  echo $((SECONDS - begun))
}

# inside PYTHON_CODE: runs Python in the namespace, with the check helpers below.
inside() {
  ip netns exec "$netns" "$py" -c "
import decimal, json, os, socket, sys, time, urllib.error, urllib.parse, urllib.request
BASE = 'http://127.0.0.1:8080'
def call(method, path, body=None, form=False, headers=None):
    data = None
    headers = dict(headers or {})
    if body is not None:
        if form:
            data = urllib.parse.urlencode(body).encode()
            headers['Content-Type'] = 'application/x-www-form-urlencoded'
        else:
            data = json.dumps(body).encode()
            headers['Content-Type'] = 'application/json'
    request = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError, socket.timeout) as error:
        return None, str(error)
def wait_for(path, status, seconds):
    deadline = time.monotonic() + seconds
    while True:
        got = call('GET', path)
        if got[0] == status:
            return got
        if time.monotonic() > deadline:
            sys.exit(f'{path}: wanted {status} within {seconds}s, last got {got}')
        time.sleep(0.25)
def expect(got, status, *texts):
    if got[0] != status or any(t not in got[1] for t in texts):
        sys.exit(f'wanted {status} with {texts}, got {got}')
    return got[1]
def with_interest(balances, rate):
    cents = lambda text: int(decimal.Decimal(text) * 100)
    paid = lambda c: c + int((decimal.Decimal(c) * decimal.Decimal(rate) / 100).quantize(1, decimal.ROUND_HALF_EVEN))
    return {o: '%d.%02d' % divmod(paid(cents(v)), 100) for o, v in balances.items()}
def balances():
    status, text = call('GET', '/accounts')
    expect((status, text), 200)
    return {a['owner']: a['balance'] for a in json.loads(text)['accounts']}
$1"
}

db_password=smoke-$$-pass
web_env=(DB_HOST=127.0.0.1 DB_PORT=3306 DB_NAME=bank DB_USER=bank "DB_PASSWORD=$db_password"
  "SEED_ACCOUNTS=alice:1000.00,bob:250.00")
db_caps=()
if [[ ${BANK_SMOKE_DB_CAPS:-} == docker ]]; then db_caps=(--docker-capabilities); fi
db_env=("${db_caps[@]}" MARIADB_DATABASE=bank MARIADB_USER=bank "MARIADB_PASSWORD=$db_password" "MARIADB_ROOT_PASSWORD=root-$$")
export WORK=$work CGROUP=$cgroup

say "network namespace $netns: loopback only"
ip netns add "$netns"
made_netns=yes
ip -n "$netns" link set lo up
ip -n "$netns" route show | grep -q . && die "$netns has routes: $(ip -n "$netns" route show)"

say "bundles from $images"
mkdir -p "$work/mysql-data" "$state"
bundle bank-web-1.0 webserver-smoke "${web_env[@]}"
bundle mariadb-10.11 mysql-0 "${db_env[@]}" --mount "$work/mysql-data:/var/lib/mysql"
bundle bank-web-1.0 bank-interest "${web_env[@]}" INTEREST_RATE_PERCENT=1.5 INTEREST_PERIOD=smoke-1 \
  -- python3 /app/interest.py

say "web server first, with no database yet"
start webserver-smoke
inside "
expect(wait_for('/healthz', 200, 30), 200, 'ok')
expect(call('GET', '/ready'), 503, 'not ready')
expect(call('GET', '/'), 503, 'not ready')
print('   /healthz 200, /ready 503 and / 503 while the database is down')"

say "database"
db_started=$SECONDS
start mysql-0
inside "
wait_for('/ready', 200, 180)
print('   /ready 200')"
say "database ready and the web app connected after $((SECONDS - db_started))s"

inside "
page = expect(call('GET', '/'), 200, 'webserver-smoke', 'alice', '1000.00', 'bob', '250.00')
print('   GET / (text):'); print('     ' + page.strip().replace(chr(10), chr(10) + '     '))
expect(call('GET', '/', headers={'Accept': 'text/html'}), 200, '<table>', 'webserver-smoke')
print('   GET / (html) 200')
expect(call('POST', '/accounts', {'owner': 'carol', 'balance': '10.00'}), 201, 'carol', '10.00')
expect(call('POST', '/accounts', {'owner': 'carol'}, form=True), 409, 'already')
expect(call('POST', '/accounts', {'owner': 'x;drop'}), 400)
print('   POST /accounts: 201, then 409 for the same owner, 400 for a bad name')
expect(call('POST', '/transfer', {'from': 'alice', 'to': 'carol', 'amount': '100.00'}), 200, '900.00', '110.00')
expect(call('POST', '/transfer', {'from': '2', 'to': '1', 'amount': '0.50'}, form=True), 200, '249.50')
print('   POST /transfer: alice -> carol 100.00 (json), bob -> alice 0.50 (form, by id): 200')
before = balances()
refused = expect(call('POST', '/transfer', {'from': 'bob', 'to': 'alice', 'amount': '300.00'}), 409, 'insufficient funds')
assert balances() == before, (before, balances())
print('   POST /transfer overdraft: 409 ' + json.loads(refused)['error'] + '; balances unchanged')
expect(call('POST', '/transfer', {'from': 'bob', 'to': 'nobody', 'amount': '1'}), 404)
expect(call('POST', '/transfer', {'from': 'bob', 'to': 'alice', 'amount': '-1'}), 400)
expect(call('POST', '/transfer', {'from': 'bob', 'to': 'bob', 'amount': '1'}), 400)
print('   POST /transfer: unknown account 404, negative amount 400, to itself 400')
assert sum(float(v) for v in balances().values()) == 1260.0, balances()
expect(call('GET', '/burn?ms=50'), 200, 'burned 50ms')
print('   balances:', balances(), '(total 1260.00, as seeded plus carol\'s 10.00)')"

say "concurrent transfers (8 clients x 25, in every direction)"
inside "
import concurrent.futures, itertools
owners = ['alice', 'bob', 'carol']
pairs = [(a, b) for a in owners for b in owners if a != b]
def client(n):
    statuses = []
    for i in range(25):
        source, target = pairs[(n + i) % len(pairs)]
        statuses.append(call('POST', '/transfer', {'from': source, 'to': target, 'amount': str(40 + 7 * ((n * i) % 11))})[0])
    return statuses
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    statuses = list(itertools.chain.from_iterable(pool.map(client, range(8))))
counts = {s: statuses.count(s) for s in set(statuses)}
assert set(counts) <= {200, 409}, counts
after = balances()
assert all(float(v) >= 0 for v in after.values()), after
assert round(sum(float(v) for v in after.values()), 2) == 1260.0, after
print('   statuses', counts, '- total still 1260.00, none negative:', after)
# What the interest job is checked against.
json.dump(after, open(f\"{os.environ['WORK']}/before-interest.json\", 'w'))"

say "sh and the mariadb client inside the containers (what kubectl exec runs)"
# shellcheck disable=SC2016 # expanded by the container's sh
runc --root "$state" exec webserver-smoke sh -c 'echo "   web: $(hostname) as $(id -u), /app: $(ls /app | tr "\n" " ")"'
runc --root "$state" exec mysql-0 sh -c 'mariadb -N -e "SELECT CONCAT(\"   db: \", owner, \" \", balance_cents) FROM accounts ORDER BY id" bank'

say "the interest job (1.5%, period smoke-1)"
# In the foreground: runc deletes the container when it exits.
containers+=(bank-interest)
runc --root "$state" run --bundle "$work/bank-interest" bank-interest </dev/null >"$work/bank-interest.log" 2>&1 ||
  die "the interest job failed: $(cat "$work/bank-interest.log")"
sed 's/^/   /' "$work/bank-interest.log"
inside "
paid = with_interest(json.load(open(os.environ['WORK'] + '/before-interest.json')), '1.5')
assert balances() == paid, (balances(), paid)
json.dump(paid, open(os.environ['WORK'] + '/after-interest.json', 'w'))
print('   balances after interest:', balances())"
runc --root "$state" run --bundle "$work/bank-interest" bank-interest </dev/null >"$work/bank-interest.log" 2>&1 ||
  die "the second interest run failed: $(cat "$work/bank-interest.log")"
grep -q "paid already" "$work/bank-interest.log" || die "the second run paid again: $(cat "$work/bank-interest.log")"
inside "
assert balances() == json.load(open(os.environ['WORK'] + '/after-interest.json')), balances()
print('   a second run for smoke-1 pays nothing; balances unchanged')"

say "database restarted on the same data directory"
took=$(stop mysql-0)
say "mysql-0 stopped ${took}s after SIGTERM"
inside "
expect(call('GET', '/ready'), 503, 'not ready')
print('   /ready 503 while it is down')"
bundle mariadb-10.11 mysql-0 "${db_env[@]}" --mount "$work/mysql-data:/var/lib/mysql"
start mysql-0
inside "
wait_for('/ready', 200, 120)
assert balances() == json.load(open(os.environ['WORK'] + '/after-interest.json')), balances()
print('   /ready 200 again, balances kept')"
[[ $(grep -c "initializing /var/lib/mysql" "$work/mysql-0.log") -eq 1 ]] ||
  die "the data directory was initialized more than once"
say "mariadbd ran as: $(grep -o 'starting mariadbd --user=[a-z]*' "$work/mysql-0.log" | sort -u | sed 's/.*=//' | tr '\n' ' ')"

say "request log lines of webserver-smoke (one per request):"
grep -c '"GET /ready"' "$work/webserver-smoke.log" | sed 's/^/   GET \/ready lines: /'
grep '"POST /transfer"' "$work/webserver-smoke.log" | head -n 3 | sed 's/^/   /'
took=$(stop webserver-smoke)
say "webserver-smoke stopped ${took}s after SIGTERM"
say "all checks passed in $((SECONDS - started))s"
