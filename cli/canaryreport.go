package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"tunnel.dev/tunnel/canary/report"
)

func newCanaryReport() *cobra.Command {
	var (
		kf   kubeFlags
		file string
	)
	cmd := &cobra.Command{
		Use:   "report SERVICE",
		Short: "Write a canary as one HTML page to look at: its steps, error rate and p99 against stable's, its checks, its verdict",
		Long: "The page is self-contained (charts inline, nothing loaded from the network), so it opens\n" +
			"offline and can be attached to a ticket. Its curves come from the Prometheus the canary was\n" +
			"judged by; its steps and checks from the canary's record, which outlives the canary.",
		Example: "  tunnel canary report shop\n  tunnel canary report shop -o /tmp/shop.html",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := kf.canaryClients(cmd)
			if err != nil {
				return err
			}
			st, err := c.store.Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			// The record names the Prometheus the page asks: while the
			// canary runs, it must be the one the canary started with.
			gone, err := c.runner.Work.Trust(cmd.Context(), st)
			if err != nil {
				return err
			}
			if gone && !st.Phase.Done() {
				fmt.Fprintf(cmd.ErrOrStderr(), "The canary's deployment is gone, so its record cannot be checked: its curves come from Prometheus at %s.\n", st.Spec.Prometheus)
			}
			d, err := report.Gather(cmd.Context(), st, time.Now())
			if err != nil {
				return err
			}
			var page bytes.Buffer
			if err := report.Write(&page, d); err != nil {
				return err
			}
			if file == "" {
				file = "canary-" + args[0] + ".html"
			}
			if err := os.WriteFile(file, page.Bytes(), 0o644); err != nil {
				return fmt.Errorf("write the report: %w", err)
			}
			abs, _ := filepath.Abs(file)
			for _, m := range d.Missing {
				fmt.Fprintf(cmd.ErrOrStderr(), "Not drawn: %s\n", m)
			}
			fmt.Fprintln(cmd.OutOrStdout(), abs)
			return nil
		},
	}
	kf.add(cmd)
	cmd.Flags().StringVarP(&file, "output", "o", "", "the page to write (default: canary-SERVICE.html here)")
	return cmd
}
