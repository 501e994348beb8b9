#!/usr/bin/env bash
# Installs what Keelson needs from the system on Debian 12 / Ubuntu, skipping
# what is already there. Run as root.
#
#   build:  gcc, pkg-config, librocksdb-dev (RocksDB is linked, not built),
#           libclang-dev (bindgen for the RocksDB bindings)
#   tests:  etcd-client (etcdctl), etcd-server (to check tests against real
#           etcd), protobuf-compiler (the etcd-client crate's build needs it)
set -euo pipefail

packages=(gcc g++ make pkg-config librocksdb-dev libclang-dev etcd-client etcd-server protobuf-compiler curl)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
  echo "==> system packages: all present"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "keelson: missing packages: ${missing[*]}; run this script as root to install them" >&2
  exit 1
fi
echo "==> installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's etcd-server package starts an etcd on the default ports; the
# project's tests start their own and need those ports free of surprises.
if systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi
echo "==> system packages: done"
