// Command podtargets is the lab's stand-in for Prometheus' Kubernetes
// service discovery, which Debian builds Prometheus without: it writes a
// file_sd target for each running pod annotated prometheus.io/scrape=true
// (the port prometheus.io/port names), and for each container port named
// "metrics" or "...-metrics" of any running pod (as a PodMonitor selects
// ports by name: the manager's, the sidecars', a canary's standby), each
// labelled with the pod's namespace and name as kube-prometheus labels
// them, so that a canary's checks read an app's own metrics by pod and the
// dashboards' panels find tunnel's own.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "admin kubeconfig")
	out := flag.String("out", "", "the file_sd file to write")
	health := flag.String("health", "127.0.0.1:10291", "where /healthz answers")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log, *kubeconfig, *out, *health); err != nil {
		log.Error("podtargets", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, kubeconfig, out, health string) error {
	if out == "" {
		return errors.New("--out is required")
	}
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	changed := make(chan struct{}, 1)
	poke := func(any) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	lw := cache.NewListWatchFromClient(cs.CoreV1().RESTClient(), "pods", metav1.NamespaceAll, fields.Everything())
	inf := cache.NewSharedIndexInformer(lw, &corev1.Pod{}, 10*time.Minute, cache.Indexers{})
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: poke, UpdateFunc: func(_, o any) { poke(o) }, DeleteFunc: poke})
	go inf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return errors.New("the pods did not sync")
	}
	if err := write(out, targets(inf.GetStore().List())); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", health)
	if err != nil {
		return err
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }))
	log.Info("writing pod scrape targets", "file", out)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		if err := write(out, targets(inf.GetStore().List())); err != nil {
			log.Warn("write the targets", "err", err)
		}
		// Pods change in bursts (a rollout): one write per burst.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// group is one file_sd entry.
type group struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// targets are the running pods' metrics addresses.
func targets(objs []any) []group {
	out := []group{}
	for _, o := range objs {
		pod := o.(*corev1.Pod)
		if pod.Status.Phase != corev1.PodRunning || pod.Status.PodIP == "" {
			continue
		}
		ports := map[string]string{} // port: its metrics path, when not /metrics
		if pod.Annotations["prometheus.io/scrape"] == "true" {
			port := pod.Annotations["prometheus.io/port"]
			if port == "" {
				for _, c := range pod.Spec.Containers {
					if len(c.Ports) > 0 {
						port = strconv.Itoa(int(c.Ports[0].ContainerPort))
						break
					}
				}
			}
			if port != "" {
				ports[port] = pod.Annotations["prometheus.io/path"]
			}
		}
		for _, c := range pod.Spec.Containers {
			for _, p := range c.Ports {
				port := strconv.Itoa(int(p.ContainerPort))
				if _, annotated := ports[port]; !annotated && (p.Name == "metrics" || strings.HasSuffix(p.Name, "-metrics")) {
					ports[port] = "" // a PodMonitor's default path
				}
			}
		}
		for _, port := range slices.Sorted(maps.Keys(ports)) {
			labels := map[string]string{"namespace": pod.Namespace, "pod": pod.Name}
			if path := ports[port]; path != "" {
				labels["__metrics_path__"] = path
			}
			out = append(out, group{Targets: []string{net.JoinHostPort(pod.Status.PodIP, port)}, Labels: labels})
		}
	}
	slices.SortFunc(out, func(a, b group) int {
		return strings.Compare(a.Labels["namespace"]+"/"+a.Labels["pod"]+"/"+a.Targets[0], b.Labels["namespace"]+"/"+b.Labels["pod"]+"/"+b.Targets[0])
	})
	return out
}

// write replaces the file whole, so Prometheus never reads half of it.
func write(path string, g []group) error {
	data, err := json.Marshal(g)
	if err != nil {
		return err
	}
	if old, err := os.ReadFile(path); err == nil && string(old) == string(data) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
