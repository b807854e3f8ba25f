package dns

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/time/rate"
)

// Exchanger answers a DNS query; the cluster's (via the manager) or an upstream's.
type Exchanger interface {
	Exchange(ctx context.Context, q *mdns.Msg) (*mdns.Msg, error)
}

// Config describes what the resolver sends where.
type Config struct {
	ClusterDomain string           // e.g. "cluster.local"; that is also the default
	Namespace     string           // the connected namespace: "<svc>" means "<svc>.<ns>.svc.<domain>"
	Include       []string         // --dns-include suffixes also sent to the cluster
	Upstreams     []netip.AddrPort // the resolvers the machine had
	NegativeTTL   time.Duration    // how long NXDOMAIN/NODATA answers are cached; default 5s (the cluster's: 1s at most)
	// Observe, if set, hears how long each query to the cluster or an
	// upstream took (cache hits are not asked), for latency metrics.
	Observe func(via string, took time.Duration, err error)
	// Client, if set, says whether a query from this source is answered;
	// others get REFUSED. A resolver on a kernel socket needs it: anyone
	// who routes to its address reaches it.
	Client func(netip.Addr) bool
}

// ResolverStats counts what the resolver did since it was made.
type ResolverStats struct {
	Queries         uint64 // client queries answered
	ClusterQueries  uint64 // queries sent to the cluster (cache misses and refreshes)
	UpstreamQueries uint64 // queries sent upstream (cache misses)
	CacheHits       uint64
	Stale           uint64 // answers past their time given while the cluster could not answer
	Failures        uint64 // client queries answered SERVFAIL
	Refused         uint64 // queries from sources Config.Client turned away
}

// ErrClosed is returned by Serve once the resolver is closed.
var ErrClosed = errors.New("dns resolver closed")

const (
	defaultClusterDomain = "cluster.local."
	defaultNegativeTTL   = 5 * time.Second
	queryTimeout         = 4 * time.Second // under a stub resolver's 5 s retry
	cacheSize            = 10000
)

// Resolver answers the laptop's queries. It is an mdns.Handler.
type Resolver struct {
	logger    *slog.Logger
	cluster   Exchanger
	upstream  *forwarder
	domain    string   // lower-case, fully qualified
	include   []string // lower-case, fully qualified
	namespace string   // lower-case
	negTTL    time.Duration
	observe   func(string, time.Duration, error)
	client    func(netip.Addr) bool
	cache     *cache
	chain     handler
	now       func() time.Time
	warn      rate.Sometimes // the packet path logs failures at most this often

	ctx    context.Context // ends on Close; bounds every query
	cancel context.CancelFunc
	stats  struct{ queries, cluster, upstream, hits, stale, failures, refused atomic.Uint64 }
	panics atomic.Uint64 // recovered in serve; the fuzz test wants none

	mu         sync.RWMutex // guards following
	namespaces map[string]bool
	subnets    []netip.Prefix
	closed     bool
	serving    sync.WaitGroup // Serve calls in progress; Add only under mu while !closed

	prefetches prefetches
}

// NewResolver returns a resolver that sends cluster names to cluster and
// everything else to cfg.Upstreams. Close it to stop Serve.
func NewResolver(logger *slog.Logger, cluster Exchanger, cfg Config) *Resolver {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	domain := fqdnLower(strings.TrimLeft(cfg.ClusterDomain, "."))
	if domain == "." {
		domain = defaultClusterDomain
	}
	if IsPublicSuffix(domain) {
		// The manager says what the cluster's domain is; "com" would send
		// every .com name to the cluster.
		logger.Warn("ignoring a cluster domain that is a public suffix", "domain", domain)
		domain = defaultClusterDomain
	}
	var include []string
	for _, s := range cfg.Include {
		if s := fqdnLower(strings.TrimLeft(s, ".")); s != "." {
			include = append(include, s)
		}
	}
	negTTL := cfg.NegativeTTL
	if negTTL <= 0 {
		negTTL = defaultNegativeTTL
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Resolver{
		logger:    logger.With("subsystem", "dns"),
		cluster:   cluster,
		upstream:  newForwarder(cfg.Upstreams),
		domain:    domain,
		include:   include,
		namespace: strings.ToLower(cfg.Namespace),
		negTTL:    negTTL,
		observe:   cfg.Observe,
		client:    cfg.Client,
		cache:     newCache(cacheSize),
		now:       time.Now,
		warn:      rate.Sometimes{First: 3, Interval: 10 * time.Second},
		ctx:       ctx,
		cancel:    cancel,

		prefetches: prefetches{inFlight: map[cacheKey]bool{}},
	}
	r.chain = &clusterHandler{r: r, next: &searchHandler{r: r, next: &upstreamHandler{r: r}}}
	return r
}

// SetNamespaces replaces the cluster's namespaces, which make "<svc>.<ns>" a
// cluster name. The daemon keeps them current.
func (r *Resolver) SetNamespaces(ns []string) {
	m := make(map[string]bool, len(ns))
	for _, n := range ns {
		// A namespace "com" must not make github.com a Service's name.
		if !IsPublicLabel(n) {
			m[strings.ToLower(n)] = true
		}
	}
	r.mu.Lock()
	r.namespaces = m
	r.mu.Unlock()
}

// SetClusterSubnets replaces the subnets whose reverse lookups go to the cluster.
func (r *Resolver) SetClusterSubnets(p []netip.Prefix) {
	p = append([]netip.Prefix(nil), p...)
	r.mu.Lock()
	r.subnets = p
	r.mu.Unlock()
}

// Stats reports what the resolver did so far.
func (r *Resolver) Stats() ResolverStats {
	return ResolverStats{
		Queries:         r.stats.queries.Load(),
		ClusterQueries:  r.stats.cluster.Load(),
		UpstreamQueries: r.stats.upstream.Load(),
		CacheHits:       r.stats.hits.Load(),
		Stale:           r.stats.stale.Load(),
		Failures:        r.stats.failures.Load(),
		Refused:         r.stats.refused.Load(),
	}
}

// Close stops every Serve call and the queries in flight, and waits for them.
func (r *Resolver) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.serving.Wait()
	r.prefetches.close()
	return nil
}

// ServeDNS answers one query; it implements mdns.Handler.
func (r *Resolver) ServeDNS(w mdns.ResponseWriter, q *mdns.Msg) {
	r.serve(r.ctx, w, q)
}

// fqdnLower is the form names are compared in.
func fqdnLower(s string) string {
	return strings.ToLower(mdns.Fqdn(s))
}
