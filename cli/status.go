package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	daemonpb "tunnel.dev/tunnel/rpc/daemon"
)

func newStatus() *cobra.Command {
	var output outputFlag
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the connection: cluster, namespace, routed subnets, DNS, session health, traffic",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := output.check(); err != nil {
				return err
			}
			st := &daemonpb.StatusResponse{Session: "disconnected"}
			c, closeFn, err := daemonClient(cmd.Context())
			switch {
			case errors.Is(err, errNoDaemon):
			case err != nil:
				return err
			default:
				defer closeFn()
				if st, err = c.Status(cmd.Context(), &daemonpb.StatusRequest{}); err != nil {
					return err
				}
			}
			if output.json() {
				return printJSON(cmd.OutOrStdout(), st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	output.add(cmd.Flags())
	return cmd
}

func printStatus(w io.Writer, st *daemonpb.StatusResponse) {
	if !st.Connected {
		fmt.Fprintln(w, "Not connected.")
		return
	}
	fmt.Fprintf(w, "Cluster:    %s (context %s)\n", st.Cluster, st.Context)
	fmt.Fprintf(w, "Namespace:  %s\n", st.Namespace)
	fmt.Fprintf(w, "Session:    %s, manager %s, %d reconnects, since %s\n", st.Session, st.ManagerVersion, st.Reconnects, st.ConnectedSince)
	if p := st.Path; p != nil {
		line := p.Carrier
		if p.Carrier == "wireguard" {
			line += fmt.Sprintf(" via %s, %d connections on it", p.Endpoint, p.WireguardFlows)
		}
		if p.Why != "" {
			line += ": " + p.Why
		}
		if p.Since != "" {
			line += ", since " + p.Since
		}
		fmt.Fprintf(w, "Path:       %s\n", line)
	}
	fmt.Fprintf(w, "Routes:     %s\n", strings.Join(st.RoutedSubnets, ", "))
	if d := st.Dns; d != nil {
		fmt.Fprintf(w, "DNS:        %s via %s, search %s; other names to %s; %d queries\n",
			d.Nameserver, d.Mode, strings.Join(d.Search, " "), strings.Join(d.Upstreams, ", "), d.Queries)
	}
	if t := st.Traffic; t != nil {
		fmt.Fprintf(w, "Traffic:    TCP %d open (%d in all), UDP %d open (%d in all), %d B sent, %d B received, %d failed dials (%d refused: beyond what you may reach)\n",
			t.TcpFlowsActive, t.TcpFlowsTotal, t.UdpFlowsActive, t.UdpFlowsTotal, t.BytesSent, t.BytesReceived, t.DialErrors, t.DialsRefused)
	}
	user := st.User
	if user == "" {
		user = "not verified: the manager lets an unverified session reach nothing and intercept nothing"
	}
	fmt.Fprintf(w, "User:       %s\n", user)
	for i, ic := range st.Intercepts {
		label := "Intercepts:"
		if i > 0 {
			label = ""
		}
		s := ic.GetSpec()
		if s.GetPort() == 0 { // a Job or CronJob, replaced by suspending it
			fmt.Fprintf(w, "%-11s %s: %s/%s, suspended (replaced)\n", label, s.GetName(), s.GetNamespace(), s.GetWorkload())
			continue
		}
		fmt.Fprintf(w, "%-11s %s: port %d of %s/%s, %s\n", label, s.GetName(), s.GetPort(), s.GetNamespace(), s.GetWorkload(),
			strings.ToLower(s.GetMode().String()))
	}
}

// printJSON prints a message as stable JSON for machines.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}
