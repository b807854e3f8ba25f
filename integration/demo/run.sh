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
# A manager an earlier run installed with another image goes, so connect
# installs this build's.
want="$($T version -o json | sed -n 's/.*"agentImage": "\(.*\)".*/\1/p')"
have="$($LAB exec --node -- kubectl -n tunnel-system get deploy tunnel-manager -o jsonpath='{.spec.template.spec.containers[0].image}' 2>/dev/null || true)"
if [ -n "$have" ] && [ "$have" != "$want" ]; then $LAB exec --node -- $T uninstall >/dev/null; fi

say "Laptop alice cannot reach the cluster without the tunnel (this should fail):"
if alice curl -sS --max-time 3 "http://$ip/"; then
  echo "unexpected: the laptop reached the cluster" >&2; exit 1
fi

say "tunnel connect, in laptop alice (installs the manager on first use):"
alice $T connect -n $ns

say "The manager runs the agent image pulled from the lab's registry (image, and the digest the node pulled):"
$LAB exec --node -- kubectl -n tunnel-system get pods -o jsonpath='{range .items[*]}{.spec.containers[0].image}{"\n"}{.status.containerStatuses[0].imageID}{"\n"}{end}'

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

say "A server on the laptop (the test app's own binary, calling itself laptop-alice):"
srv=/var/lib/tunnel-lab/images/echo
$LAB exec --laptop alice -- env POD_NAME=laptop-alice $srv --http 127.0.0.1:7070 \
  --http2 127.0.0.1:0 --tcp 127.0.0.1:0 --udp 127.0.0.1:0 >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for i in $(seq 1 50); do alice curl -sf --max-time 1 http://127.0.0.1:7070/healthz >/dev/null && break; sleep 0.1; done

say "tunnel intercept echo --port 7070:http (adds the sidecar: one rollout):"
alice $T intercept echo --port 7070:http
alice $T list

say "From inside the cluster, the Service is now answered by the laptop:"
for i in 1 2 3; do $LAB exec --node -- curl -sS --max-time 5 "http://$ip/intercepted-$i"; done
$LAB exec --node -- kubectl -n $ns exec deploy/echo -c echo -- /echo get "http://echo.$ns/from-a-pod"

say "tunnel leave: the pods answer again:"
alice $T leave echo-http
for i in 1 2; do $LAB exec --node -- curl -sS --max-time 5 "http://$ip/after-leave-$i"; done

say "tunnel uninstall --agent echo (the Deployment and Service exactly as before):"
alice $T uninstall --agent echo -n $ns

say "tunnel quit (routes and DNS restored):"
alice $T quit
alice cat /etc/resolv.conf

# The release loop: source to image to Deployment, then a canary through
# the lab's gateway, judged on the gateway's metrics in Prometheus.
registry="env DOCKER_CONFIG=/var/lib/tunnel-lab/registry/docker SSL_CERT_FILE=/var/lib/tunnel-lab/registry/ca-bundle.pem"
repo=10.209.0.1:5000/demo
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r integration/demo/shop "$work/"
shop=$work/shop
gw=$($LAB exec --node -- kubectl -n lab-gateway get svc traefik -o jsonpath='{.spec.clusterIP}')
through_gateway() { $LAB exec --node -- curl -sS --max-time 5 -H "Host: shop.lab.test" "http://$gw/$1"; }
# A canary an earlier run left unfinished is rolled back first.
alice $T canary abort shop -n $ns >/dev/null 2>&1 || true

say "tunnel deploy --build: the shop's Go source (integration/demo/shop) built into an image, pushed, deployed by digest:"
alice $registry $T deploy "$shop/deploy" --build --registry $repo -n $ns
for i in $(seq 1 60); do through_gateway healthz >/dev/null 2>&1 && break; sleep 0.5; done
say "Users reach it through the gateway (Traefik, Gateway API), as shop.lab.test:"
through_gateway first-look

say "The same source again pushes nothing and changes nothing:"
alice $registry $T deploy "$shop/deploy" --build --registry $repo -n $ns

# Users' traffic through the gateway for as long as the canaries run.
$LAB exec --node -- $srv load "http://$gw/" 40 shop.lab.test >/dev/null 2>&1 &
load=$!
trap 'kill $server $load 2>/dev/null || true; rm -rf "$work"' EXIT
canary() {
  alice $registry $T canary start shop -n $ns --build "$shop/deploy" --registry $repo \
    --steps 20,50,100 --interval 10s --min-requests 20 --prometheus http://10.209.0.1:9090
}

say "A change that breaks 30% of requests (shop v2), shipped as a canary: 20%, 50%, 100% of users, 10 s a step:"
sed -i 's/version  = "v1"/version  = "v2"/; s/failRate = 0.0 /failRate = 0.3 /' "$shop/cmd/shop/main.go"
if canary; then
  echo "unexpected: the failing release was promoted" >&2; exit 1
fi
# It failed for the reason it should have, not for a build or a registry.
alice $T canary status shop -n $ns -o json | grep -q '"phase": "RolledBack"' || {
  echo "unexpected: the canary did not end rolled back" >&2; alice $T canary status shop -n $ns; exit 1; }
say "The shop still answers from v1 for everyone:"
through_gateway after-rollback

say "The fix (shop v3), shipped the same way:"
sed -i 's/version  = "v2"/version  = "v3"/; s/failRate = 0.3 /failRate = 0.0 /' "$shop/cmd/shop/main.go"
canary
through_gateway after-promote
kill $load 2>/dev/null || true

say "The canary's report (steps, error rate and p99 against stable, verdict), a page that opens offline:"
alice $T canary report shop -n $ns -o "$PWD/bin/canary-shop.html"
