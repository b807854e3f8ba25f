package cli

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"tunnel.dev/tunnel/agent/inject"
	"tunnel.dev/tunnel/preview"
	daemonpb "tunnel.dev/tunnel/rpc/daemon"
	managerpb "tunnel.dev/tunnel/rpc/manager"
)

// listed is one workload in `tunnel list -o json`.
type listed struct {
	Name          string            `json:"name"` // NAME for a Deployment, KIND/NAME otherwise
	Kind          string            `json:"kind"`
	Sidecar       bool              `json:"sidecar"`
	CapturedPorts []int32           `json:"captured_ports"`
	ReplacedFor   string            `json:"replaced_for,omitempty"` // the intercept it is replaced for`
	Intercepts    []listedIntercept `json:"intercepts"`
}

type listedIntercept struct {
	Name        string `json:"name"`
	Port        uint32 `json:"port"`
	Mode        string `json:"mode"`
	User        string `json:"user"`
	Host        string `json:"host"`
	HeaderName  string `json:"header_name,omitempty"`
	HeaderValue string `json:"header_value,omitempty"`
	PreviewURL  string `json:"preview_url,omitempty"`
}

func newList() *cobra.Command {
	var (
		kf     kubeFlags
		output outputFlag
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the namespace's workloads: which have the sidecar, which ports are intercepted and by whom",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if err := output.check(); err != nil {
				return err
			}
			var ics []*managerpb.Intercept
			ns := kf.namespace
			c, closeFn, err := daemonClient(ctx)
			switch {
			case errors.Is(err, errNoDaemon):
			case err != nil:
				return err
			default:
				defer closeFn()
				st, err := c.Status(ctx, &daemonpb.StatusRequest{})
				if err != nil {
					return errors.New(status.Convert(err).Message())
				}
				if ns == "" {
					ns = st.Namespace
				}
				if st.Connected {
					resp, err := c.ListIntercepts(ctx, &daemonpb.ListInterceptsRequest{Namespace: ns})
					if err != nil {
						return errors.New(status.Convert(err).Message())
					}
					ics = resp.GetIntercepts()
				}
			}
			if ns == "" {
				if ns, _, err = kf.clientConfig().Namespace(); err != nil {
					return err
				}
			}
			wc, err := kf.workloads()
			if err != nil {
				return err
			}
			all, err := wc.List(ctx, ns)
			if err != nil {
				return err
			}
			// A Job or CronJob is listed while it is marked replaced: the
			// mark is written before its intercept answers, and stays
			// after a crash. Its pods carry no sidecar.
			if marked, err := wc.ListBatch(ctx, ns, inject.ReplacedAnnot); err == nil {
				all = append(all, marked...)
			}
			previews := preview.List(ctx, wc.Dyn, ns)
			var out []listed
			for _, d := range all {
				l := listed{Name: d.Ref.String(), Kind: d.Kind, Sidecar: inject.HasSidecar(&d.Template), CapturedPorts: []int32{}, Intercepts: []listedIntercept{},
					ReplacedFor: inject.Replaced(d)}
				for app := range inject.Captures(&d.Template) {
					l.CapturedPorts = append(l.CapturedPorts, app)
				}
				slices.Sort(l.CapturedPorts)
				for _, ic := range ics {
					if s := ic.GetSpec(); s.GetWorkload() == d.Ref.String() {
						l.Intercepts = append(l.Intercepts, listedIntercept{
							Name: s.GetName(), Port: s.GetPort(), Mode: strings.ToLower(s.GetMode().String()),
							User: ic.GetUser(), Host: ic.GetHost(), HeaderName: s.GetHeaderName(), HeaderValue: s.GetHeaderValue(),
							PreviewURL: previews[s.GetName()],
						})
					}
				}
				out = append(out, l)
			}
			if output.json() {
				return writeJSON(cmd.OutOrStdout(), map[string]any{"namespace": ns, "workloads": append([]listed{}, out...)})
			}
			if len(out) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "No workloads in namespace %s.\n", ns)
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "WORKLOAD\tSIDECAR\tINTERCEPTS")
			for _, l := range out {
				side := "no"
				if l.Sidecar {
					side = fmt.Sprintf("yes, ports %v", l.CapturedPorts)
				}
				if l.ReplacedFor != "" {
					side += ", replaced for " + l.ReplacedFor
				}
				var parts []string
				for _, ic := range l.Intercepts {
					p := fmt.Sprintf("%s: port %d %s by %s", ic.Name, ic.Port, ic.Mode, ic.User)
					if ic.Port == 0 { // a Job or CronJob replaced: held by no port
						p = fmt.Sprintf("%s: suspended, replaced by %s", ic.Name, ic.User)
					}
					if ic.HeaderName != "" {
						p += fmt.Sprintf(" (%s: %s)", ic.HeaderName, ic.HeaderValue)
					}
					if ic.PreviewURL != "" {
						p += " at " + ic.PreviewURL
					}
					parts = append(parts, p)
				}
				if len(parts) == 0 {
					parts = []string{"-"}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", l.Name, side, strings.Join(parts, "; "))
			}
			return tw.Flush()
		},
	}
	kf.add(cmd)
	output.add(cmd.Flags())
	return cmd
}
