#!/usr/bin/env bash
# Builds the bank scenario's images offline, from this machine's Debian
# packages (apt-get is the only thing that may go to the network):
#
#   keelson.local/bank-web:1.0   Python 3, pymysql and deploy/bank-web (/app)
#   keelson.local/mariadb:10.11  MariaDB's server and client, an entrypoint
#                                that initializes an empty /var/lib/mysql
#
# Each is written as OUT_DIR/<name>-<tag>.tar, an OCI image layout (with a
# `docker save` manifest.json beside it) that `keelson image import FILE`,
# `docker load` and `ctr images import` accept. Usage:
#
#   deploy/images/build.sh [OUT_DIR]           (default: target/bank-images)
#   keelson image import OUT_DIR/*.tar --data-dir DIR    (on every node)
#
# How an image is made:
#
#   root filesystem, staged in a temporary directory (merged /usr, as Debian's):
#     binaries copied from the installed packages + what `ldd` says they load
#     busybox-static as /bin/sh and the usual tools, /etc/passwd, group, ...
#   ─► two layers, runtime (large, rarely changes) then app (small):
#      tar (sorted, owner 0:0, mtime SOURCE_DATE_EPOCH or 0) | gzip -n
#   ─► config, manifest, index.json, manifest.json ─► one tar
#
# Reruns give the same files (same digests) for the same packages and sources.
set -euo pipefail
umask 022
export LC_ALL=C

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)
app_src=$repo/deploy/bank-web
out_dir=${1:-$repo/target/bank-images}
epoch=${SOURCE_DATE_EPOCH:-0}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
mariadb_series=10.11

packages=(busybox-static python3 python3-pymysql mariadb-server mariadb-client)

say() { echo "==> $*"; }
die() {
  echo "build.sh: error: $*" >&2
  exit 1
}

# ------------------------------------------------------------------ packages

install_packages() {
  local missing=() package
  for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$package")
  done
  if ((${#missing[@]} == 0)); then
    say "packages: all installed (${packages[*]})"
    return
  fi
  [[ $(id -u) -eq 0 ]] || die "missing packages: ${missing[*]}; run as root to install them"
  say "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the server it installs where services may start; the
  # images carry their own, this machine needs none running.
  if systemctl is-active --quiet mariadb 2>/dev/null; then
    say "stopping and disabling the host's mariadb service the package started"
    systemctl disable --now mariadb >/dev/null 2>&1 || true
  fi
}

# --------------------------------------------------------- root filesystems

# copy_file ROOT PATH: PATH (from this machine) into ROOT at the same place.
# Directories are resolved (/lib/x86_64-linux-gnu lands in /usr/lib/...);
# a symlink is copied as a link, then what it points at, down the chain.
copy_file() {
  local root=$1 path=$2 dir name dest target
  dir=$(realpath -e "$(dirname "$path")")
  name=$(basename "$path")
  dest=$root$dir/$name
  [[ -e $dest || -L $dest ]] && return 0
  [[ -e $dir/$name || -L $dir/$name ]] || die "$path is not on this machine"
  mkdir -p "$root$dir"
  if [[ -L $dir/$name ]]; then
    cp -P "$dir/$name" "$dest"
    target=$(readlink "$dir/$name")
    [[ $target == /* ]] || target=$dir/$target
    copy_file "$root" "$target"
  else
    cp -p "$dir/$name" "$dest"
  fi
}

# libraries_of FILE...: the shared libraries the files load (ldd's closure);
# fails if one cannot be found.
libraries_of() {
  local file output
  for file in "$@"; do
    # A static binary is "not a dynamic executable": nothing to add.
    output=$(ldd "$file" 2>/dev/null) || continue
    if grep -q "not found" <<<"$output"; then
      die "$file needs a library this machine does not have: $(grep 'not found' <<<"$output" | tr -s ' \t' ' ')"
    fi
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$output"
  done | sort -u
}

# copy_libraries_of ROOT FILE...: every library the files load, into ROOT.
copy_libraries_of() {
  local root=$1 libraries library
  shift
  libraries=$(libraries_of "$@")
  for library in $libraries; do copy_file "$root" "$library"; done
}

# copy_with_libraries ROOT FILE...: the files and every library they load.
copy_with_libraries() {
  local root=$1 file
  shift
  for file in "$@"; do copy_file "$root" "$file"; done
  copy_libraries_of "$root" "$@"
}

# base_rootfs ROOT PASSWD GROUP: the directories every image has, /etc's
# few files, and busybox as /bin/sh and every tool it provides.
base_rootfs() {
  local root=$1 passwd=$2 group=$3 dir applet target
  mkdir -p "$root"/{etc,tmp,var/tmp,root,run,proc,sys,dev,usr/bin,usr/sbin,usr/lib,usr/local/bin}
  chmod 1777 "$root/tmp" "$root/var/tmp"
  chmod 0700 "$root/root"
  # Merged /usr, as on this machine: /bin -> usr/bin, ...
  for dir in bin sbin lib lib32 lib64 libx32; do
    if [[ -L /$dir && $(readlink "/$dir") == "usr/$dir" ]]; then
      mkdir -p "$root/usr/$dir"
      ln -s "usr/$dir" "$root/$dir"
    fi
  done
  printf '%s\n' "$passwd" >"$root/etc/passwd"
  printf '%s\n' "$group" >"$root/etc/group"
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
  : >"$root/etc/resolv.conf"
  printf 'NAME="Keelson bank image (from Debian %s packages)"\nID=keelson-bank\n' \
    "$(cut -d. -f1 /etc/debian_version)" >"$root/etc/os-release"

  copy_file "$root" /usr/bin/busybox
  # Applets where busybox installs them, unless a real program is there.
  while read -r applet; do
    applet=${applet#/}
    case $applet in
      bin/* | sbin/*) applet=usr/$applet ;;
    esac
    [[ -e $root/$applet || -L $root/$applet ]] && continue
    case $applet in
      usr/bin/*) target=busybox ;;
      usr/sbin/*) target=../bin/busybox ;;
      *) continue ;;
    esac
    ln -s "$target" "$root/$applet"
  done < <(/usr/bin/busybox --list-full | sort)
}

# compile_python ROOT DIR...: .pyc files next to the sources, checked by
# hash never by mtime (the layers' mtimes are all the same), so Python
# never needs to write them at run time.
compile_python() {
  local root=$1
  shift
  "$python" -m compileall -q --invalidation-mode unchecked-hash -s "$root" -p / "$@" >/dev/null
}

build_bank_web_rootfs() {
  local runtime=$1 app=$2 stdlib dist
  stdlib=/usr/lib/$(basename "$python") # /usr/lib/python3.11
  dist=/usr/lib/python3/dist-packages
  base_rootfs "$runtime" \
    $'root:x:0:0:root:/root:/bin/sh\nbank:x:10001:10001:bank:/tmp:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false' \
    $'root:x:0:\nbank:x:10001:\nnogroup:x:65534:'

  say "bank-web: $python and what it loads"
  copy_with_libraries "$runtime" "$python" /usr/bin/python3
  # Loaded by glibc when a thread exits or is cancelled, never named by ldd.
  copy_file "$runtime" "/usr/lib/$multiarch/libgcc_s.so.1"

  say "bank-web: the standard library ($stdlib), without tests, tools and build files"
  mkdir -p "$runtime$stdlib"
  tar -C "$stdlib" -cf - \
    --exclude=__pycache__ --exclude='./config-*' --exclude=./test --exclude=./idlelib \
    --exclude=./tkinter --exclude=./turtledemo --exclude=./turtle.py --exclude=./ensurepip \
    --exclude=./lib2to3 --exclude=./pydoc_data --exclude=./distutils --exclude=./venv \
    --exclude=./sqlite3 --exclude=./sitecustomize.py --exclude=./EXTERNALLY-MANAGED \
    --exclude='./lib-dynload/_test*' --exclude='./lib-dynload/_xx*' --exclude='./lib-dynload/xx*' \
    --exclude='./lib-dynload/_ctypes_test*' --exclude='./lib-dynload/_tkinter*' \
    --exclude='./lib-dynload/_curses*' --exclude='./lib-dynload/nis.*' \
    --exclude='./lib-dynload/ossaudiodev*' --exclude='./lib-dynload/_dbm.*' \
    --exclude='./lib-dynload/_sqlite3*' . | tar -C "$runtime$stdlib" -xf -
  copy_libraries_of "$runtime" "$runtime$stdlib"/lib-dynload/*.so

  say "bank-web: pymysql ($dist/pymysql)"
  mkdir -p "$runtime$dist"
  cp -a "$dist/pymysql" "$runtime$dist/"
  find "$runtime$dist" -name __pycache__ -prune -exec rm -rf {} +
  compile_python "$runtime" "$runtime$stdlib" "$runtime$dist"

  say "bank-web: the app (/app) from $app_src"
  mkdir -p "$app/app"
  install -m 0644 "$app_src/bank.py" "$app_src/server.py" "$app_src/interest.py" "$app/app/"
  compile_python "$app" "$app/app"
}

build_mariadb_rootfs() {
  local runtime=$1 config=$2 version plugins
  version=$(/usr/sbin/mariadbd --version)
  [[ $version == *" $mariadb_series."* ]] ||
    die "the image is tagged $mariadb_series but this machine's server is: $version"
  base_rootfs "$runtime" \
    $'root:x:0:0:root:/root:/bin/sh\nmysql:x:999:999:MariaDB Server:/nonexistent:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false' \
    $'root:x:0:\nmysql:x:999:\nnogroup:x:65534:'

  say "mariadb: mariadbd, the client, mariadb-install-db and what they load"
  mapfile -t plugins < <(find /usr/lib/mysql/plugin -maxdepth 1 -name '*.so' ! -name 'auth_pam*' | sort)
  copy_with_libraries "$runtime" /usr/sbin/mariadbd /usr/bin/mariadb /usr/bin/mariadb-admin \
    /usr/bin/my_print_defaults /usr/bin/resolveip "${plugins[@]}"
  copy_file "$runtime" /usr/bin/mariadb-install-db
  local compat
  for compat in /usr/sbin/mysqld /usr/bin/mysql /usr/bin/mysqladmin /usr/bin/mysql_install_db; do
    if [[ -L $compat ]]; then copy_file "$runtime" "$compat"; fi
  done

  say "mariadb: /usr/share/mysql (English messages, charsets, bootstrap SQL)"
  mkdir -p "$runtime/usr/share/mysql"
  cp -a /usr/share/mysql/english /usr/share/mysql/charsets /usr/share/mysql/*.sql "$runtime/usr/share/mysql/"
  mkdir -p "$runtime/var/lib/mysql" "$runtime/run/mysqld"

  say "mariadb: the entrypoint and /etc/mysql/my.cnf"
  mkdir -p "$config/etc/mysql" "$config/usr/local/bin"
  install -m 0644 "$script_dir/mariadb/my.cnf" "$config/etc/mysql/my.cnf"
  install -m 0755 "$script_dir/mariadb/entrypoint.sh" "$config/usr/local/bin/docker-entrypoint.sh"
}

# ----------------------------------------------------------------- the tar

# sha256_of FILE: its hex digest.
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# add_blob LAYOUT FILE: moves FILE into LAYOUT/blobs/sha256/; prints its digest.
add_blob() {
  local layout=$1 file=$2 hex
  hex=$(sha256_of "$file")
  mkdir -p "$layout/blobs/sha256"
  chmod 0644 "$file"
  mv "$file" "$layout/blobs/sha256/$hex"
  echo "$hex"
}

# make_layer LAYOUT DIR: DIR as a gzip-compressed layer blob; sets
# layer_hex, layer_size and layer_diff_id (the uncompressed tar's digest).
make_layer() {
  local layout=$1 dir=$2 list tarball
  list=$(mktemp "$work/files.XXXXXX")
  tarball=$(mktemp "$work/layer.XXXXXX")
  (cd "$dir" && find . -mindepth 1 -printf '%P\n' | sort) >"$list"
  tar --create --file="$tarball" --directory="$dir" --no-recursion \
    --verbatim-files-from --files-from="$list" \
    --format=gnu --numeric-owner --owner=0 --group=0 --mtime="@$epoch"
  layer_diff_id=$(sha256_of "$tarball")
  gzip -n -6 "$tarball"
  layer_hex=$(add_blob "$layout" "$tarball.gz")
  layer_size=$(stat -c %s "$layout/blobs/sha256/$layer_hex")
  rm -f "$list"
}

# write_image OUT NAME TAG CONFIG_JSON LAYER_DIR:COMMENT...: the image as
# one tar; CONFIG_JSON is the image config's "config" object.
write_image() {
  local out=$1 name=$2 tag=$3 runconfig=$4
  shift 4
  local layout spec dir comment
  local layers="" diff_ids="" history="" docker_layers=""
  layout=$(mktemp -d "$work/layout.XXXXXX")
  for spec in "$@"; do
    dir=${spec%%:*}
    comment=${spec#*:}
    make_layer "$layout" "$dir"
    layers+="${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$layer_hex\",\"size\":$layer_size}"
    diff_ids+="${diff_ids:+,}\"sha256:$layer_diff_id\""
    history+="${history:+,}{\"created\":\"$created\",\"created_by\":\"deploy/images/build.sh\",\"comment\":\"$comment\"}"
    docker_layers+="${docker_layers:+,}\"blobs/sha256/$layer_hex\""
    say "$name:$tag: layer '$comment': $(numfmt --to=iec "$layer_size") compressed (sha256:${layer_hex:0:12})"
  done

  local arch config_hex config_size manifest_hex manifest_size
  arch=$(dpkg --print-architecture)
  printf '{"created":"%s","architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":[%s]},"history":[%s]}' \
    "$created" "$arch" "$runconfig" "$diff_ids" "$history" >"$work/config.json"
  config_size=$(stat -c %s "$work/config.json")
  config_hex=$(add_blob "$layout" "$work/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s],"annotations":{"org.opencontainers.image.created":"%s","org.opencontainers.image.ref.name":"%s"}}' \
    "$config_hex" "$config_size" "$layers" "$created" "$tag" >"$work/manifest.json"
  manifest_size=$(stat -c %s "$work/manifest.json")
  manifest_hex=$(add_blob "$layout" "$work/manifest.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s:%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_hex" "$manifest_size" "$arch" "$name" "$tag" "$tag" >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  # `docker load` of Docker before 25 reads this instead of index.json.
  printf '[{"Config":"blobs/sha256/%s","RepoTags":["%s:%s"],"Layers":[%s]}]' \
    "$config_hex" "$name" "$tag" "$docker_layers" >"$layout/manifest.json"

  tar --create --file="$out.tmp" --directory="$layout" --sort=name \
    --format=gnu --numeric-owner --owner=0 --group=0 --mtime="@$epoch" \
    oci-layout index.json manifest.json blobs
  mv "$out.tmp" "$out"
  rm -rf "$layout"
  say "$name:$tag: wrote $out ($(numfmt --to=iec "$(stat -c %s "$out")"), manifest sha256:$manifest_hex)"
}

# ------------------------------------------------------------------- main

started=$SECONDS
install_packages
python=$(realpath -e /usr/bin/python3) # /usr/bin/python3.11
multiarch=$("$python" -c 'import sys; print(sys.implementation._multiarch)')
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/bank-images.XXXXXX")
trap 'rm -rf "$work"' EXIT

build_bank_web_rootfs "$work/bank-web-runtime" "$work/bank-web-app"
write_image "$out_dir/bank-web-1.0.tar" keelson.local/bank-web 1.0 \
  '{"User":"10001:10001","Env":["PATH=/usr/local/bin:/usr/bin:/usr/sbin","LANG=C.UTF-8","PYTHONUNBUFFERED=1","PYTHONDONTWRITEBYTECODE=1","PORT=8080"],"Cmd":["/usr/bin/python3","/app/server.py"],"WorkingDir":"/app","ExposedPorts":{"8080/tcp":{}},"Labels":{"org.opencontainers.image.title":"bank-web","org.opencontainers.image.description":"The bank scenario web app (deploy/bank-web)"}}' \
  "$work/bank-web-runtime:python, pymysql, busybox" "$work/bank-web-app:the app"

build_mariadb_rootfs "$work/mariadb-runtime" "$work/mariadb-config"
write_image "$out_dir/mariadb-$mariadb_series.tar" keelson.local/mariadb "$mariadb_series" \
  '{"Env":["PATH=/usr/local/bin:/usr/bin:/usr/sbin","LANG=C.UTF-8"],"Entrypoint":["/usr/local/bin/docker-entrypoint.sh"],"Cmd":["mariadbd"],"WorkingDir":"/","ExposedPorts":{"3306/tcp":{}},"Volumes":{"/var/lib/mysql":{}},"StopSignal":"SIGTERM","Labels":{"org.opencontainers.image.title":"mariadb","org.opencontainers.image.description":"MariaDB server and client from Debian packages"}}' \
  "$work/mariadb-runtime:mariadb, busybox" "$work/mariadb-config:entrypoint and my.cnf"

say "done in $((SECONDS - started))s: $out_dir/bank-web-1.0.tar $out_dir/mariadb-$mariadb_series.tar"
