package cli

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"

	"tunnel.dev/tunnel/agent/inject"
	"tunnel.dev/tunnel/agent/manifest"
	"tunnel.dev/tunnel/preview"
	"tunnel.dev/tunnel/rpc"
	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	managerpb "tunnel.dev/tunnel/rpc/manager"
	"tunnel.dev/tunnel/workload"
)

// autoHeader is --http-header auto: a header name and value are made up.
const autoHeader = "auto"

type interceptFlags struct {
	kf          kubeFlags
	agent       agentFlags // if intercept has to install the manager
	port        string
	service     string
	name        string
	header      string
	mirror      bool
	noFallback  bool
	replace     bool
	preview     bool
	previewHost string
	envFile     string
	envSyntax   string
	envJSON     string
	envAll      bool
	timeout     time.Duration
	output      outputFlag
}

func newIntercept() *cobra.Command {
	var f interceptFlags
	cmd := &cobra.Command{
		Use:   "intercept WORKLOAD [-- COMMAND ARGS...]",
		Short: "Send a workload's traffic to a process on this machine",
		Long: "Send the traffic that reaches a workload through its Service to a process on this machine.\n" +
			"WORKLOAD is a Deployment, StatefulSet, DaemonSet, ReplicaSet or Argo Rollout, named NAME,\n" +
			"KIND/NAME (statefulset/db), or by the Service in front of it. A Job or CronJob, whose pods run to\n" +
			"completion, is only replaced: --replace suspends it while this machine does its work.\n" +
			"The first intercept adds a sidecar to the workload (one rollout), with your own permissions;\n" +
			"`tunnel uninstall --agent WORKLOAD` takes it out again. With -- COMMAND the command runs with\n" +
			"the pod's environment and the intercept ends when it exits, with its exit code.",
		Example: "  tunnel intercept echo --port 8080:http\n" +
			"  tunnel intercept statefulset/db --port 5432\n" +
			"  tunnel intercept echo --port 8080 --http-header x-tunnel-dev=alice -- ./myserver\n" +
			"  tunnel intercept echo --port 8080 --mirror --env-file echo.env\n" +
			"  tunnel intercept cronjob/nightly --replace -- ./report",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dash := cmd.ArgsLenAtDash()
			if dash > 1 || (dash < 0 && len(args) > 1) {
				return fmt.Errorf("intercept takes one workload; put the command to run after --")
			}
			var command []string
			if dash == 1 {
				command = args[1:]
			}
			return runIntercept(cmd, &f, args[0], command)
		},
	}
	f.kf.add(cmd)
	f.agent.add(cmd.Flags())
	fl := cmd.Flags()
	fl.StringVar(&f.port, "port", "", "LOCAL[:PORT]: the local port that answers, and the Service port (name or number) whose app port to take; default: the one app port the Services lead to, answered on the same local port (--replace of a workload no Service selects: a port of its containers)")
	fl.StringVar(&f.service, "service", "", "the Service whose port to take, when several select the workload")
	fl.StringVar(&f.name, "name", "", "the intercept's name (default WORKLOAD-PORT, plus your user name for personal and mirror intercepts)")
	fl.StringVar(&f.header, "http-header", "", "personal intercept: take only HTTP requests with this header: NAME=VALUE, or NAME (a value is made up and printed), or auto (both are)")
	fl.BoolVar(&f.mirror, "mirror", false, "take a copy of each HTTP request; the app still answers")
	fl.BoolVar(&f.noFallback, "no-fallback", false, "when this machine cannot answer, fail the request instead of passing it to the app")
	fl.BoolVar(&f.preview, "preview", false, "open the personal intercept by URL through the cluster's gateway: a route for a host name of its own that adds its header (--http-header)")
	fl.StringVar(&f.previewHost, "preview-host", "", "the preview's host name (default: the intercept's name under the domain the install set, --preview-domain)")
	fl.BoolVar(&f.replace, "replace", false, "stop the workload's own containers (one replica, its containers idle; a Job or CronJob suspended) so this machine is its only consumer; leave puts it back")
	fl.StringVar(&f.envFile, "env-file", "", "write the workload's environment to this file")
	fl.StringVar(&f.envSyntax, "env-syntax", "docker", "syntax of --env-file: docker, sh or json")
	fl.StringVar(&f.envJSON, "env-json", "", "write the workload's environment to this file as JSON")
	fl.BoolVar(&f.envAll, "env-all", false, "keep variables of the workload that change how this machine runs programs (PATH, LD_PRELOAD, BASH_ENV, NODE_OPTIONS, ...)")
	fl.DurationVar(&f.timeout, "timeout", 2*time.Minute, "how long the sidecar's rollout may take")
	f.output.add(fl)
	return cmd
}

func runIntercept(cmd *cobra.Command, f *interceptFlags, target string, command []string) error {
	ctx := cmd.Context()
	errOut := cmd.ErrOrStderr()
	progress := func(s string) {
		if !f.output.json() {
			fmt.Fprintln(errOut, s+"...")
		}
	}
	if err := f.output.check(); err != nil {
		return err
	}
	if f.header != "" && f.mirror {
		return errors.New("--http-header and --mirror do not go together: a mirror copies every request")
	}
	if f.replace && (f.header != "" || f.mirror) {
		return errors.New("--replace takes every request, so it does not go with --http-header or --mirror")
	}
	if f.previewHost != "" {
		f.preview = true
	}
	if f.preview && f.header == "" {
		return errors.New("--preview opens a personal intercept by URL: give it a header with --http-header (auto makes one up)")
	}
	if f.envSyntax != "docker" && f.envSyntax != "sh" && f.envSyntax != "json" {
		return fmt.Errorf("unknown --env-syntax %q: use docker, sh or json", f.envSyntax)
	}
	local, remote, err := parsePortFlag(f.port)
	if err != nil {
		return err
	}
	headerName, headerValue, err := parseHeader(f.header)
	if err != nil {
		return err
	}

	st, err := currentStatus(ctx)
	if err != nil {
		return err
	}
	if !st.Connected { // connect first, as `tunnel connect` with the same flags would
		progress("Connecting to the cluster")
		if _, err := connect(ctx, cmd, &f.kf, connectOptions{agent: f.agent, quiet: f.output.json()}); err != nil {
			return err
		}
		if st, err = currentStatus(ctx); err != nil {
			return err
		}
	}
	c, closeFn, err := daemonClient(ctx)
	if err != nil {
		return err
	}
	defer closeFn()
	ns := f.kf.namespace
	if ns == "" {
		ns = st.Namespace
	}
	wc, err := f.kf.workloads()
	if err != nil {
		return err
	}
	cs := wc.CS

	// Permissions first, where the name says the kind: a user who may not
	// change the workload hears which permission is missing, not that it
	// cannot be read. A bare name is looked up first (reading only).
	if r, err := workload.ParseRef(target); err == nil && strings.Contains(target, "/") {
		if err := inject.CheckAccess(ctx, cs, ns, r.Kind, false); err != nil {
			return err
		}
	} else if err := inject.CheckServiceAccess(ctx, cs, ns); err != nil {
		return err
	}
	plan, err := inject.Resolve(ctx, wc, inject.Target{Namespace: ns, Workload: target, Service: f.service, Port: remote, Replace: f.replace})
	if err != nil {
		return err
	}
	if err := inject.CheckAccess(ctx, cs, ns, plan.Workload.Kind, workload.Recreates(plan.Workload)); err != nil {
		return err
	}
	if plan.Warning != "" {
		fmt.Fprintf(errOut, "Warning: %s.\n", plan.Warning)
	}
	if workload.IsBatch(plan.Workload.Kind) {
		return replaceBatch(cmd, f, c, wc, plan, local, command)
	}
	// A replace runs one replica of the kinds that scale by replicas; else
	// a workload that runs no pods has no traffic to take yet.
	if k := plan.Workload.Kind; plan.Workload.Replicas() == 0 && (!f.replace || k == workload.StatefulSet || k == workload.DaemonSet) {
		fmt.Fprintf(errOut, "Warning: %s runs no pods now, so nothing reaches the intercept until it does.\n", plan.Workload.Describe())
	}
	ref := plan.Workload.Ref
	if local == 0 {
		local = uint32(plan.AppPort)
	}
	agent, err := sidecarAgent(ctx, cs)
	if err != nil {
		return err
	}
	if err := inject.CheckPullSecrets(ctx, cs, ns, agent); err != nil {
		return err
	}
	takeBack, err := inject.Ensure(ctx, wc, plan, agent, f.timeout, progress)
	if err != nil {
		return err
	}
	// What this call added (the sidecar, a port of it, Service ports
	// pointed at it) goes again if the intercept does not come to be: a
	// refusal leaves the workload and its Services as they were. Not while
	// an intercept holds the port now (another user's that came meanwhile,
	// or this one if the manager took it after all), as far as the manager
	// says.
	undo := func(cause error) error {
		uctx := context.WithoutCancel(ctx)
		if l, err := c.ListIntercepts(uctx, &daemonpb.ListInterceptsRequest{Namespace: ns}); err == nil &&
			slices.ContainsFunc(l.GetIntercepts(), func(ic *managerpb.Intercept) bool {
				return ic.GetSpec().GetWorkload() == ref.String() && ic.GetSpec().GetPort() == uint32(plan.AppPort)
			}) {
			return cause
		}
		if rerr := takeBack(uctx); rerr != nil {
			return fmt.Errorf("%w (and taking back what the intercept changed failed: %v)", cause, rerr)
		}
		return cause
	}
	awaitSidecar(ctx, plan, progress, errOut)

	spec := &managerpb.InterceptSpec{
		Name: f.name, Namespace: ns, Workload: ref.String(), Port: uint32(plan.AppPort),
		Mode: managerpb.InterceptMode_GLOBAL, NoFallback: f.noFallback || f.replace, // a replaced app answers nothing
	}
	switch {
	case f.mirror:
		spec.Mode = managerpb.InterceptMode_MIRROR
	case f.header != "":
		spec.Mode, spec.HeaderName, spec.HeaderValue = managerpb.InterceptMode_PERSONAL, headerName, headerValue
	}
	if spec.Name == "" {
		spec.Name = defaultName(ref.Name, plan.ServicePort.Name, plan.AppPort, spec)
	}
	req := &daemonpb.InterceptRequest{Spec: spec, LocalPort: local, ServicePort: uint32(plan.ServicePort.Port)}
	if plan.Service != nil {
		req.Service = plan.Service.Name
	}
	if f.preview {
		req.PreviewHost, req.PreviewDomain = strings.ToLower(f.previewHost), agent.PreviewDomain
		if req.PreviewHost == "" {
			if agent.PreviewDomain == "" {
				return undo(errors.New("a preview needs a host name: give --preview-host HOST, or have an admin set a domain with `tunnel install --preview-domain DOMAIN`"))
			}
			req.PreviewHost = preview.Host(spec.Name, ns, agent.PreviewDomain)
		}
		progress("Opening the preview through the cluster's gateway")
	}
	if f.replace {
		req.Replace = true
		progress(fmt.Sprintf("Replacing the containers of %s with this machine (one rollout)", plan.Workload.Describe()))
	}
	// Re-adding a name the laptop holds moves that intercept (a laptop
	// re-registers this way): when it was of another port, say so.
	var prev *managerpb.Intercept
	if l, err := c.ListIntercepts(ctx, &daemonpb.ListInterceptsRequest{Namespace: ns}); err == nil {
		for _, ic := range l.GetIntercepts() {
			if ic.GetSpec().GetName() == spec.Name {
				prev = ic
			}
		}
	}
	resp, err := c.Intercept(ctx, req)
	if err != nil {
		return undo(errors.New(status.Convert(err).Message()))
	}
	ic := resp.GetIntercept()
	if p := prev.GetSpec(); p != nil && prev.GetUser() == ic.GetUser() && prev.GetHost() == ic.GetHost() &&
		(p.GetWorkload() != spec.Workload || p.GetPort() != spec.Port) {
		fmt.Fprintf(errOut, "Note: this takes the place of your intercept %s of port %d of %s, which had the same name; give --name to keep both.\n",
			spec.Name, p.GetPort(), p.GetWorkload())
	}
	if f.replace { // one replica now: as many sidecars to wait for
		if w, err := wc.Get(ctx, ns, ref); err == nil {
			plan.Workload = w
		}
	}
	awaitIntercept(ctx, plan, resp.GetProbe(), 10*time.Second, progress, errOut)
	if !listening(local) && len(command) == 0 && plan.Service != nil {
		then := "requests go to the app"
		if f.noFallback {
			then = "requests fail (--no-fallback)"
		}
		fmt.Fprintf(errOut, "Warning: nothing listens on localhost:%d yet; until something does, %s.\n", local, then)
	}

	env, err := writeEnv(ctx, cs, plan, f, errOut)
	if err != nil {
		_, _ = c.Leave(context.WithoutCancel(ctx), &daemonpb.LeaveRequest{Namespace: ns, Name: spec.Name})
		return undo(err)
	}
	if f.output.json() {
		if err := printJSON(cmd.OutOrStdout(), ic); err != nil {
			return err
		}
	} else {
		if plan.Service == nil { // nothing sends a worker traffic: "all traffic to port N" would not be true
			fmt.Fprintf(cmd.OutOrStdout(), "Intercept %s: %s is replaced by this machine (held by its port %d).\n", spec.Name, plan.Workload.Describe(), plan.AppPort)
		} else {
			fmt.Fprintln(cmd.OutOrStdout(), describeIntercept(ic, local))
		}
		if u := resp.GetPreviewUrl(); u != "" {
			fmt.Fprintf(cmd.OutOrStdout(), "Preview URL: %s (the cluster's gateway adds %s: %s to its requests)\n", u, spec.HeaderName, spec.HeaderValue)
			fmt.Fprintln(errOut, "Note: whoever reaches the gateway with this URL opens your laptop's version; share it as you would a password.")
		}
		if plan.Service == nil {
			fmt.Fprintf(errOut, "Note: no Service selects the pods of %s; its containers run nothing of their own now, so this machine is its only consumer.\n", plan.Workload.Describe())
		} else if ic.GetSpec().GetMode() == managerpb.InterceptMode_GLOBAL {
			fmt.Fprintf(errOut, "Note: every client of %s/%s now reaches your localhost:%d, from outside the cluster too if the Service is exposed; --http-header takes only your own requests.\n",
				ns, plan.Service.Name, local)
		}
	}
	return runThenLeave(ctx, c, ns, spec.Name, command, env, errOut)
}

// runThenLeave runs command (none: returns at once) with env, then ends
// the intercept, and passes the command's exit code on.
func runThenLeave(ctx context.Context, c daemonpb.DaemonClient, ns, name string, command []string, env map[string]string, errOut io.Writer) error {
	if len(command) == 0 {
		return nil
	}
	code := runWithEnv(ctx, command, env, errOut)
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 4*time.Minute) // a replaced workload rolls back first
	defer cancel()
	if _, err := c.Leave(lctx, &daemonpb.LeaveRequest{Namespace: ns, Name: name}); err != nil {
		fmt.Fprintf(errOut, "Warning: ending intercept %s: %s\n", name, status.Convert(err).Message())
	}
	if code != 0 {
		return exitCode(code)
	}
	return nil
}

// awaitSidecar waits until a request to the Service port reaches a
// sidecar (kube-proxy applies a new targetPort a moment after the API
// server has it), and says so when it does not within 20 s.
func awaitSidecar(ctx context.Context, plan *inject.Plan, progress func(string), errOut io.Writer) {
	ok := awaitProbe(ctx, plan, "sidecar", 20*time.Second, func(h http.Header) bool { return h.Get(rpc.SidecarHeader) != "" },
		func() { progress("Waiting for Service " + plan.Service.Name + " to send its traffic to the sidecar") })
	if !ok {
		fmt.Fprintf(errOut, "Warning: Service %s does not reach the sidecar yet; the intercept takes its traffic once it does.\n", plan.Service.Name)
	}
}

// awaitIntercept waits until the sidecars that the Service's requests
// reach have the intercept from the manager (a sidecar just started may
// not have its link yet), so the next request goes where the intercept
// says: a yes from as many pods as the workload has (one, when the
// Service keeps a client on one pod). A sidecar from before the answer is
// taken at its word.
func awaitIntercept(ctx context.Context, plan *inject.Plan, probe string, timeout time.Duration, progress func(string), errOut io.Writer) {
	if probe == "" || plan.Service == nil { // no direct key, nothing to ask with, or no Service to ask through
		return
	}
	want := 1
	if r := plan.Workload.Replicas(); r > 1 && plan.Service.Spec.SessionAffinity != corev1.ServiceAffinityClientIP {
		want = int(r)
	}
	has := map[string]bool{}
	ok := awaitProbe(ctx, plan, probe, timeout, func(h http.Header) bool {
		pod := h.Get(rpc.SidecarHeader)
		if pod == "" {
			return false
		}
		if h.Get(rpc.ProbeHasHeader) == "no" {
			delete(has, pod)
		} else {
			has[pod] = true
		}
		return len(has) >= want
	}, func() { progress("Waiting for the sidecars to take the intercept") })
	if !ok {
		fmt.Fprintln(errOut, "Warning: not every sidecar has the intercept yet; it takes their traffic once they do.")
	}
}

// awaitProbe sends probes with value to the Service port until done says
// so of an answer's header, or for timeout; wait is called once, when the
// first answer is not enough.
func awaitProbe(ctx context.Context, plan *inject.Plan, value string, timeout time.Duration, done func(http.Header) bool, wait func()) bool {
	if plan.Service == nil { // a replaced worker: nothing sends it traffic
		return true
	}
	ip := plan.Service.Spec.ClusterIP
	if ip == "" || ip == corev1.ClusterIPNone {
		return true
	}
	url := "http://" + net.JoinHostPort(ip, strconv.Itoa(int(plan.ServicePort.Port))) + "/"
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	for said, deadline := false, time.Now().Add(timeout); time.Now().Before(deadline); {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set(rpc.ProbeHeader, value)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if done(resp.Header) {
				return true
			}
		}
		if !said {
			wait()
			said = true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return false
}

// currentStatus is the daemon's status, or "disconnected" when none runs.
func currentStatus(ctx context.Context) (*daemonpb.StatusResponse, error) {
	c, closeFn, err := daemonClient(ctx)
	if errors.Is(err, errNoDaemon) {
		return &daemonpb.StatusResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer closeFn()
	st, err := c.Status(ctx, &daemonpb.StatusRequest{})
	if err != nil {
		return nil, errors.New(status.Convert(err).Message())
	}
	return st, nil
}

// parsePortFlag reads --port LOCAL[:PORT].
func parsePortFlag(s string) (uint32, string, error) {
	if s == "" {
		return 0, "", nil
	}
	l, remote, _ := strings.Cut(s, ":")
	n, err := strconv.ParseUint(l, 10, 16)
	if err != nil || n == 0 {
		return 0, "", fmt.Errorf("--port %q: want LOCAL[:PORT], LOCAL a port number on this machine", s)
	}
	return uint32(n), remote, nil
}

// parseHeader reads --http-header NAME=VALUE, or makes one up.
func parseHeader(s string) (string, string, error) {
	switch {
	case s == "":
		return "", "", nil
	case s == autoHeader:
		return "x-tunnel-intercept", localUser() + "-" + strings.ToLower(rand.Text()[:6]), nil
	}
	n, v, ok := strings.Cut(s, "=")
	if !ok {
		v = localUser() + "-" + strings.ToLower(rand.Text()[:6])
	}
	if n == "" || v == "" || strings.ContainsAny(n, " :\t=") {
		return "", "", fmt.Errorf("--http-header %q: want NAME=VALUE, NAME or auto", s)
	}
	return n, v, nil
}

// defaultName names an intercept WORKLOAD-PORT; a personal one adds this
// laptop's user and host, a mirror those and "mirror", so that two laptops
// sharing one Kubernetes credential (a team's kubeconfig) get names of
// their own. Not the header's value: others see names, and the manager
// withholds values from them.
func defaultName(workload, portName string, appPort int32, spec *managerpb.InterceptSpec) string {
	p := portName
	if p == "" {
		p = strconv.Itoa(int(appPort))
	}
	suffix := ""
	if spec.GetMode() != managerpb.InterceptMode_GLOBAL {
		host, _ := os.Hostname()
		host, _, _ = strings.Cut(host, ".")
		suffix = "-" + localUser() + "-" + host
		if spec.GetMode() == managerpb.InterceptMode_MIRROR {
			suffix += "-mirror"
		}
	}
	// Too long for a name: the workload's part gives way, not the port or
	// what tells laptops apart.
	suffix = nameLabel(suffix)
	p = nameLabel(p)
	w := nameLabel(workload)
	if room := 63 - len(p) - 1 - len(suffix) - min(len(suffix), 1); len(w) > room {
		w = strings.TrimRight(w[:max(room, 1)], "-")
	}
	name := w + "-" + p
	if suffix != "" {
		name += "-" + suffix
	}
	return nameLabel(name) // at most 63, when the port and laptop alone are longer
}

// nameLabel makes s a name the manager takes: lowercase letters, digits
// and dashes, at most 63 characters.
func nameLabel(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			b[i] = '-'
		}
	}
	return strings.Trim(string(b[:min(len(b), 63)]), "-")
}

func localUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return strings.ToLower(u.Username)
	}
	return "me"
}

// sidecarAgent is the image the manager runs, by the digest its pods
// pulled (a moved tag cannot put two versions into one cluster), and the
// pull secrets it was installed with: the sidecar is the same binary.
func sidecarAgent(ctx context.Context, cs kubernetes.Interface) (inject.Agent, error) {
	r, err := manifest.ReadRunning(ctx, cs)
	if err != nil {
		return inject.Agent{}, err
	}
	return inject.Agent{Image: r.Image, PullSecrets: r.PullSecrets, Memory: r.SidecarMemory, ManagerKey: r.ManagerKey,
		PreviewDomain: r.PreviewDomain}, nil
}

func listening(port uint32) bool {
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err != nil {
		c, err = net.DialTimeout("tcp", fmt.Sprintf("[::1]:%d", port), time.Second)
	}
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func describeIntercept(ic *managerpb.Intercept, local uint32) string {
	s := ic.GetSpec()
	what := "all traffic"
	switch s.GetMode() {
	case managerpb.InterceptMode_PERSONAL:
		what = fmt.Sprintf("requests with %s: %s", s.GetHeaderName(), s.GetHeaderValue())
	case managerpb.InterceptMode_MIRROR:
		what = "a copy of each request"
	}
	of := s.GetNamespace() + "/" + s.GetWorkload()
	if r, err := workload.ParseRef(s.GetWorkload()); err == nil && r.Kind != workload.Deployment {
		of = r.Describe(s.GetNamespace())
	}
	return fmt.Sprintf("Intercept %s: %s to port %d of %s now reaches localhost:%d.", s.GetName(), what, s.GetPort(), of, local)
}

// runWithEnv runs command with the workload's environment over this one,
// passing signals on, and returns its exit code.
func runWithEnv(ctx context.Context, command []string, env map[string]string, errOut interface{ Write([]byte) (int, error) }) int {
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, errOut
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(errOut, "run %s: %v\n", command[0], err)
		return 127
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				_ = cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err := cmd.Wait()
	close(done)
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	if err != nil {
		return 1
	}
	return 0
}

// exitCode is an error that makes tunnel exit with a command's code.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// CommandExit says whether err is a command's exit (from intercept --
// COMMAND), and its code, which tunnel passes on without a message.
func CommandExit(err error) (int, bool) {
	var e exitCode
	if errors.As(err, &e) {
		return int(e), true
	}
	return 0, false
}
