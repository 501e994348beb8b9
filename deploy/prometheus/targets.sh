#!/usr/bin/env bash
# targets.sh PROFILE [DIR]: the scrape targets of the local cluster PROFILE
# (`keelson up -p PROFILE`) for deploy/prometheus/prometheus.yml, which stays
# static. Writes, in DIR (default: the current directory):
#
#   keelson-targets.json   a file_sd file: one target group per metrics URL
#                          that `keelson status -p PROFILE -o json` lists,
#                          labelled __keelson_job (etcd, apiserver, kubelet,
#                          kubelet-resource: which job keeps it), profile,
#                          and member or node
#   keelson-pki            a link to the profile's pki/ (ca.crt, admin.crt,
#                          admin.key: the TLS files the HTTPS jobs present)
#
# Run it again after `keelson node add` or `node delete`: Prometheus reads
# the file again by itself. Components that are not running stay listed,
# so that they show as down. Needs jq; `keelson` from PATH, or $KEELSON.
set -euo pipefail

profile=${1:?usage: targets.sh PROFILE [DIR]}
dir=${2:-.}
keelson=${KEELSON:-keelson}

# `keelson status` exits 7 (and still prints everything) when a component is
# not running.
status=$("$keelson" status -p "$profile" -o json) || [[ $? -eq 7 ]]

# A member's plain-HTTP URL is its store's (etcd's --listen-metrics-urls);
# its HTTPS one its API server's.
filter='
  def job($kind; $url):
    if $kind == "member" then (if ($url | startswith("http://")) then "etcd" else "apiserver" end)
    elif ($url | endswith("/metrics/resource")) then "kubelet-resource"
    else "kubelet" end;
  .profile as $profile
  | [ .components[] | . as $c | .metrics[]
      | { targets: [ capture("^https?://(?<address>[^/]+)/").address ],
          labels: ({ __keelson_job: job($c.kind; .), profile: $profile }
                   + (if $c.kind == "member" then { member: $c.name } else { node: $c.name } end)) } ]'

mkdir -p "$dir"
# Written whole, then renamed: Prometheus never reads half a file.
jq "$filter" <<<"$status" >"$dir/keelson-targets.json.tmp"
mv "$dir/keelson-targets.json.tmp" "$dir/keelson-targets.json"
ln -sfn "$(dirname "$(jq -r .tls.caFile <<<"$status")")" "$dir/keelson-pki"
echo "$dir/keelson-targets.json: $(jq length "$dir/keelson-targets.json") targets of profile $profile"
