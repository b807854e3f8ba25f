// Command release builds what tunnel ships, for `make image` and `make
// release`: the agent image (pushed to a registry, or written as an OCI
// layout), the binaries for every platform, and their checksums. It is a
// build tool, not shipped itself.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/spf13/cobra"

	"tunnel.dev/tunnel/release"
)

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

// options every verb shares.
type options struct {
	version, registry, source, caCerts, workDir string
	platforms                                   []string
}

func (o *options) add(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.version, "version", "", "the version to stamp (default: from git)")
	f.StringVar(&o.registry, "registry", "", "the registry prefix (HOST[:PORT]/PATH) the agent image is pushed to and the CLI pulls from by default")
	f.StringVar(&o.source, "source", "tunnel.dev/tunnel", "the source's address, for the image's labels")
	f.StringVar(&o.caCerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "the CA bundle the agent image carries")
	f.StringVar(&o.workDir, "work-dir", "bin/release", "where binaries are built")
	f.StringSliceVar(&o.platforms, "agent-platforms", []string{"linux/amd64", "linux/arm64"}, "the agent image's platforms")
}

func newRoot() *cobra.Command {
	root := &cobra.Command{Use: "release", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(&cobra.Command{
		Use: "version", Short: "Print the version a build of this tree is stamped with", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), release.ReadSource(cmd.Context(), ".").Version)
			return err
		},
	})
	root.AddCommand(newImage(), newDist())
	return root
}

func newImage() *cobra.Command {
	var (
		o      options
		layout string
	)
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build the agent image (linux/amd64 and arm64); push it with --registry, write it with --oci-layout",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			opt, idx, err := o.agentImage(ctx, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			d, err := idx.Digest()
			if err != nil {
				return err
			}
			if layout != "" {
				if err := release.WriteLayout(idx, opt.Version, opt.Created, layout); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "wrote %s\n", layout)
			}
			if o.registry == "" {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), d)
				return err
			}
			ref := release.AgentRef(o.registry, opt.Version)
			fmt.Fprintf(cmd.ErrOrStderr(), "pushing %s...\n", ref)
			pushed, err := release.Push(ctx, idx, ref)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), pushed)
			return err
		},
	}
	o.add(cmd)
	cmd.Flags().StringVar(&layout, "oci-layout", "", "also write the image as an OCI layout tarball here")
	return cmd
}

// agentImage builds the agent for each platform, and its image.
func (o *options) agentImage(ctx context.Context, progress io.Writer) (release.ImageOptions, v1.ImageIndex, error) {
	return release.BuildAgentImage(ctx, release.AgentBuild{
		Dir: ".", WorkDir: o.workDir, Version: o.version, Platforms: o.platforms,
		CACerts: o.caCerts, Source: o.source, Progress: progress,
	})
}

func newDist() *cobra.Command {
	var (
		o            options
		out          string
		cliPlatforms []string
	)
	cmd := &cobra.Command{
		Use:   "dist",
		Short: "Build a release into --out: tunnel for every platform, tunnel-agent for linux, the agent image as an OCI layout, SHA256SUMS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if err := os.MkdirAll(out, 0o755); err != nil {
				return err
			}
			opt, idx, err := o.agentImage(ctx, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			stamp := release.Stamp{Version: opt.Version, Registry: o.registry}
			var files []string
			for _, p := range cliPlatforms {
				goos, goarch, _ := strings.Cut(p, "/")
				name := fmt.Sprintf("tunnel-%s-%s-%s", opt.Version, goos, goarch)
				if goos == "windows" {
					name += ".exe"
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "building %s...\n", name)
				if err := release.Binary(ctx, ".", "./cmd/tunnel", goos, goarch, filepath.Join(out, name), stamp); err != nil {
					return err
				}
				files = append(files, name)
			}
			for p, bin := range opt.Binaries {
				_, goarch, _ := strings.Cut(p, "/")
				name := fmt.Sprintf("tunnel-agent-%s-linux-%s", opt.Version, goarch)
				if err := copyFile(bin, filepath.Join(out, name)); err != nil {
					return err
				}
				files = append(files, name)
			}
			layout := fmt.Sprintf("tunnel-agent-%s-oci.tar", opt.Version)
			if err := release.WriteLayout(idx, opt.Version, opt.Created, filepath.Join(out, layout)); err != nil {
				return err
			}
			files = append(files, layout)
			if err := writeSums(out, files); err != nil {
				return err
			}
			d, _ := idx.Digest()
			fmt.Fprintf(cmd.OutOrStdout(), "release %s in %s (agent image %s)\n", opt.Version, out, d)
			return nil
		},
	}
	o.add(cmd)
	cmd.Flags().StringVar(&out, "out", "dist", "where the release goes")
	cmd.Flags().StringSliceVar(&cliPlatforms, "cli-platforms",
		[]string{"linux/amd64", "linux/arm64", "darwin/amd64", "darwin/arm64", "windows/amd64", "windows/arm64"}, "where the tunnel CLI runs")
	return cmd
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// writeSums writes SHA256SUMS in the format `sha256sum -c` checks.
func writeSums(dir string, files []string) error {
	slices.Sort(files)
	var b strings.Builder
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(sum[:]), f)
	}
	return os.WriteFile(filepath.Join(dir, "SHA256SUMS"), []byte(b.String()), 0o644)
}
