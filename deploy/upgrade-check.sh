#!/usr/bin/env bash
# A rolling upgrade from a previous release to this tree: builds REVISION
# (a tag or commit) into a cache outside the clone, then runs the upgrade
# test of tests/ha.rs against that binary (as root: it makes network
# namespaces). Not part of deploy/test.sh, which has no older build.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: deploy/upgrade-check.sh REVISION}
cache=${KEELSON_UPGRADE_CACHE:-/var/tmp/keelson-upgrade}
mkdir -p "$cache"
git worktree remove --force "$cache/src" 2>/dev/null || true
git worktree add --force --detach "$cache/src" "$rev"
trap 'git worktree remove --force "$cache/src"' EXIT
echo "==> building $rev"
(cd "$cache/src" && CARGO_TARGET_DIR="$cache/target" cargo build --bin keelson)
echo "==> upgrading a cluster of $rev to this tree"
KEELSON_PREVIOUS_BIN="$cache/target/debug/keelson" \
  cargo test --test ha a_rolling_upgrade_from_the_previous_release -- --nocapture
