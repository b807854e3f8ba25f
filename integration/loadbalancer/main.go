// Command loadbalancer is the lab's load balancer, as MetalLB in L2 mode
// is a cluster's: it gives each Service of type LoadBalancer an address
// from --range and writes it in the Service's status. The node answers for
// the range (laptops route to it, and kube-proxy's rules take a load
// balancer's address to the Service's pods), so nothing else is needed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "admin kubeconfig")
	rangeFlag := flag.String("range", "", "CIDR to hand out addresses from")
	health := flag.String("health", "127.0.0.1:10290", "where /healthz answers")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log, *kubeconfig, *rangeFlag, *health); err != nil {
		log.Error("loadbalancer", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, kubeconfig, cidr, health string) error {
	pool, err := netip.ParsePrefix(cidr)
	if err != nil || !pool.Addr().Is4() {
		return fmt.Errorf("--range %q: want an IPv4 CIDR", cidr)
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

	lw := cache.NewListWatchFromClient(cs.CoreV1().RESTClient(), "services", metav1.NamespaceAll, fields.Everything())
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	inf := cache.NewSharedIndexInformer(lw, &corev1.Service{}, 10*time.Minute, cache.Indexers{})
	enqueue := func(obj any) {
		if k, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			q.Add(k)
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }})
	go inf.Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return errors.New("the Services did not sync")
	}
	ln, err := net.Listen("tcp", health)
	if err != nil {
		return err
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }))
	log.Info("handing out load balancer addresses", "range", pool)

	go func() { <-ctx.Done(); q.ShutDown() }()
	for {
		key, quit := q.Get()
		if quit {
			return nil
		}
		if err := assign(ctx, cs, inf.GetStore(), pool, key); err != nil {
			log.Warn("assign an address", "service", key, "err", err)
			q.AddRateLimited(key)
		} else {
			q.Forget(key)
		}
		q.Done(key)
	}
}

// assign gives the Service key an address when it is a LoadBalancer
// without one: the lowest address of the pool no other Service holds.
func assign(ctx context.Context, cs kubernetes.Interface, store cache.Store, pool netip.Prefix, key string) error {
	obj, ok, err := store.GetByKey(key)
	if err != nil || !ok {
		return err
	}
	svc := obj.(*corev1.Service)
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || len(svc.Status.LoadBalancer.Ingress) > 0 {
		return nil
	}
	used := map[netip.Addr]bool{}
	for _, o := range store.List() {
		for _, in := range o.(*corev1.Service).Status.LoadBalancer.Ingress {
			if a, err := netip.ParseAddr(in.IP); err == nil {
				used[a] = true
			}
		}
	}
	for a := pool.Addr().Next(); pool.Contains(a); a = a.Next() {
		if used[a] {
			continue
		}
		svc = svc.DeepCopy()
		svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: a.String(), IPMode: ptrTo(corev1.LoadBalancerIPModeVIP)}}
		_, err := cs.CoreV1().Services(svc.Namespace).UpdateStatus(ctx, svc, metav1.UpdateOptions{})
		return err
	}
	return fmt.Errorf("no address left in %s", pool)
}

func ptrTo[T any](v T) *T { return &v }
