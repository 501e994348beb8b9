#!/usr/bin/env bash
# Installs what Keelson needs from the system on Debian 12 / Ubuntu, skipping
# what is already there. Run as root.
#
#   build:  gcc, pkg-config, librocksdb-dev (RocksDB is linked, not built),
#           libclang-dev (bindgen for the RocksDB bindings), libseccomp-dev
#           (libcontainer's seccomp filters)
#   tests:  etcd-client (etcdctl), etcd-server (to check tests against real
#           etcd), protobuf-compiler (the etcd-client crate's build needs it),
#           busybox-static (the test images are built from it, offline),
#           docker-registry (the CNCF distribution registry: the image pull
#           tests push to and pull from one on loopback) and apache2-utils
#           (htpasswd, for the bcrypt password of its authenticated variant),
#           prometheus (promtool and the server: tests/prometheus.rs lints
#           every /metrics and scrapes a local cluster with deploy/prometheus/)
#           and jq (deploy/prometheus/targets.sh reads `keelson status -o json`),
#   run:    iptables (the service proxy's rules) and
#           containernetworking-plugins (bridge, host-local, loopback,
#           portmap: the pods' interfaces)
#           python3-venv and, in a virtualenv at KEELSON_PYTHON_ENV
#           (/var/cache/keelson/python), the official Kubernetes Python client
set -euo pipefail

packages=(gcc g++ make pkg-config librocksdb-dev libclang-dev libseccomp-dev etcd-client etcd-server protobuf-compiler curl python3-venv busybox-static docker-registry apache2-utils prometheus jq iptables containernetworking-plugins)
python_env=${KEELSON_PYTHON_ENV:-/var/cache/keelson/python}
# The Python client of the Kubernetes version kubectl speaks (1.32).
python_client=kubernetes==32.0.1

# install_python_client: the virtualenv the Python client tests use.
install_python_client() {
  if "$python_env/bin/python" -c 'import kubernetes' 2>/dev/null; then
    return
  fi
  echo "==> installing the Kubernetes Python client into $python_env"
  python3 -m venv "$python_env"
  "$python_env/bin/pip" install --quiet --disable-pip-version-check "$python_client"
}

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

# kubectl (1.32) drives the Kubernetes API in the tests; it is not a
# Debian package, so it is only checked for.
command -v kubectl >/dev/null || echo "keelson: kubectl is not installed; the kubectl tests need kubectl 1.32 on PATH" >&2

if ((${#missing[@]} == 0)); then
  echo "==> system packages: all present"
  install_python_client
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
# Likewise Debian's docker-registry starts a registry on :5000; the tests
# start their own, each on a port of its choosing.
if systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi
# And Debian's prometheus starts a server on :9090; the tests start their own.
if systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
echo "==> system packages: done"
install_python_client
