#!/usr/bin/env bash
# The first command: installs what is missing, builds Keelson and the bank
# scenario's images, starts a local HA cluster (three members, two nodes,
# each in a network namespace of its own) with the scenario deployed, and
# prints what to try. Run as root. Run again, it starts the profile again.
#
#   KEELSON_PROFILE   the local cluster's name (default kube-demo)
#   KEELSON_NODES     nodes of a new profile (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${KEELSON_PROFILE:-kube-demo}
nodes=${KEELSON_NODES:-2}

./deploy/install-deps.sh
echo "==> building keelson (release)"
cargo build --release --locked --quiet
bin=$PWD/target/release/keelson

echo "==> building the bank scenario's images (deploy/images/build.sh)"
./deploy/images/build.sh target/bank-images

echo "==> keelson up --nodes $nodes -p $profile"
"$bin" up --nodes "$nodes" -p "$profile"

echo "==> loading the images into every node"
"$bin" image load target/bank-images/*.tar -p "$profile"

echo "==> kubectl apply -f deploy"
kubectl apply -f deploy

cat <<EOT

Keelson is running: profile $profile, kubectl's current context.
  kubectl get nodes -o wide
  $bin profile list
  kubectl get deployment,statefulset,pods,services
  kubectl describe deployment webserver-deployment
  $bin tunnel -p $profile &            # the LoadBalancer's EXTERNAL-IP, reachable from here
  kubectl get service webserver-service
  $bin node stop $profile-m02 -p $profile   # a node failure; its pods move
  $bin status -p $profile
  $bin logs server-1 -p $profile
Remove it all with: $bin delete -p $profile
EOT
