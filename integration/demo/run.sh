#!/usr/bin/env bash
# The demo: the lab is up; deploy the test app and show it answering from
# inside the cluster, by its Service's address and by its name.
set -euo pipefail
cd "$(dirname "$0")/../.."
LAB=bin/lab
ns=demo
say() { printf '\n\033[1m%s\033[0m\n' "$*"; }

say "The lab:"
$LAB status

say "Deploy the test app (namespace $ns):"
$LAB exec --node -- kubectl apply -f integration/demo/echo.yaml
$LAB exec --node -- kubectl -n $ns rollout status deployment/echo --timeout=120s
$LAB exec --node -- kubectl -n $ns get pods,svc -o wide

ip=$($LAB exec --node -- kubectl -n $ns get svc echo -o jsonpath='{.spec.clusterIP}')
# kube-proxy writes the Service's rules a moment after the pods are ready.
for i in $(seq 1 60); do
  $LAB exec --node -- curl -sf --max-time 1 "http://$ip/healthz" >/dev/null && break
  sleep 0.5
done
say "From the node, through the Service's ClusterIP $ip (kube-proxy picks a pod):"
for i in 1 2 3; do $LAB exec --node -- curl -sS --max-time 5 "http://$ip/demo-$i"; done

say "From a pod, by the Service's name (CoreDNS):"
$LAB exec --node -- kubectl -n $ns exec deploy/echo -- /echo get "http://echo.$ns/by-name"

T=$PWD/bin/tunnel
alice() { $LAB exec --laptop alice -- "$@"; }
alice $T quit >/dev/null 2>&1 || true

say "Laptop alice cannot reach the cluster without the tunnel (this should fail):"
if alice curl -sS --max-time 3 "http://$ip/"; then
  echo "unexpected: the laptop reached the cluster" >&2; exit 1
fi

say "tunnel connect, in laptop alice (installs the manager on first use):"
alice $T connect -n $ns

say "From the laptop, by the Service's name, its short name and a pod's address:"
alice curl -sS --max-time 5 "http://echo.$ns/from-the-laptop"
alice curl -sS --max-time 5 "http://echo/short-name"
pod=$($LAB exec --node -- kubectl -n $ns get pods -o jsonpath='{.items[0].status.podIP}')
alice curl -sS --max-time 5 "http://$pod:8080/pod-address"

say "DNS as a pod sees it (SRV record), and names outside the cluster as before:"
alice dig +short SRV "_http._tcp.echo.$ns.svc.cluster.local"
alice dig +short upstream.lab.test

say "tunnel status:"
alice $T status

say "tunnel quit (routes and DNS restored):"
alice $T quit
alice cat /etc/resolv.conf
