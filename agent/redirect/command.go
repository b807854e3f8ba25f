// Package redirect is `tunnel-agent redirect`, the init container an
// intercept adds when clients reach the workload's pods at their own
// addresses (a headless Service's pod names, web-0.web.ns): it sends TCP
// that arrives at the pod for an app port to the sidecar's listener, with
// one nftables rule per port in the pod's network namespace. The pod's
// own connections (the sidecar's to the app) do not pass that hook, so
// what no intercept takes still reaches the app. The rules go with the
// pod: taking the sidecar out makes pods without them.
package redirect

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

// Table is the nftables table tunnel's rules live in.
const Table = "tunnel"

// Port is one redirect: TCP for App goes to To.
type Port struct{ App, To uint16 }

// Command is `tunnel-agent redirect --port APP=TO ...`.
func Command() *cobra.Command {
	var ports []string
	cmd := &cobra.Command{
		Use:   "redirect",
		Short: "Send TCP for the app's ports to the sidecar (an init container; needs NET_ADMIN)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ps, err := Parse(ports)
			if err != nil {
				return err
			}
			if err := Install(ps); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "redirecting %s\n", strings.Join(ports, ", "))
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&ports, "port", nil, "APP=TO: inbound TCP for port APP goes to port TO (repeatable)")
	return cmd
}

// Parse reads APP=TO pairs.
func Parse(pairs []string) ([]Port, error) {
	if len(pairs) == 0 {
		return nil, fmt.Errorf("no --port to redirect")
	}
	var out []Port
	for _, p := range pairs {
		a, t, ok := strings.Cut(p, "=")
		app, err1 := strconv.ParseUint(a, 10, 16)
		to, err2 := strconv.ParseUint(t, 10, 16)
		if !ok || err1 != nil || err2 != nil || app == 0 || to == 0 {
			return nil, fmt.Errorf("--port %q is not APP=TO with two port numbers", p)
		}
		out = append(out, Port{App: uint16(app), To: uint16(to)})
	}
	return out, nil
}
