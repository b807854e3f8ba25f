package build

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"tunnel.dev/tunnel/release"
)

// AppDir is where the binary sits in its image: /app/NAME, the image's
// entrypoint.
const AppDir = "/app"

// epoch is every file's and the config's time: the digest must not
// depend on when the build ran.
var epoch = time.Unix(0, 0).UTC()

// Options shape a build.
type Options struct {
	// Dir is the folder the packages are named relative to (the
	// manifests' folder, whose values.yaml names them).
	Dir string
	// Registry is the repository prefix images go under:
	// REGISTRY/NAME:TAG, NAME the command's.
	Registry string
	// Platforms are those the cluster's nodes run (linux/amd64, ...); the
	// order does not matter.
	Platforms []v1.Platform
	// Base is an image to build on (its layers, user and environment kept);
	// empty for tunnel's own: a passwd naming a non-root user, CACerts, /tmp.
	Base string
	// CACerts is the PEM bundle tunnel's own base carries; nil for the
	// Mozilla roots this build of tunnel carries (RootsPEM), so the image
	// does not depend on the machine that builds it.
	CACerts []byte
	// Version goes into the tag, before the digest's start:
	// VERSION-DIGEST12, so a tag never moves to other content.
	Version string
	// DryRun builds and says what would be pushed, and pushes nothing.
	DryRun bool
	// Remote adds to the registry options (a keychain, a transport);
	// the default keychain is always asked.
	Remote   []remote.Option
	Progress func(string)
}

// Result is one parameter's image.
type Result struct {
	Param   string `json:"param"`
	Package string `json:"package"`
	Image   string `json:"image"` // REPO@sha256:...
	Tag     string `json:"tag"`   // REPO:VERSION-DIGEST12, the same content
	Pushed  bool   `json:"pushed"`
	// InRegistry: the registry had it already, and nothing was pushed.
	InRegistry bool `json:"inRegistry"`
}

// Build builds each target (a template parameter and the package whose
// image fills it), pushes the images, and returns them by digest, in the
// parameters' order. Nothing is pushed unless every target builds.
func Build(ctx context.Context, targets map[string]string, opt Options) ([]Result, error) {
	platforms, err := normalize(opt.Platforms)
	if err != nil {
		return nil, err
	}
	if err := checkRegistry(opt.Registry); err != nil {
		return nil, err
	}
	dir, err := Folder(opt.Dir)
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	progress := opt.Progress
	if progress == nil {
		progress = func(string) {}
	}
	tmp, err := os.MkdirTemp("", "tunnel-build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	ropts := append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authKeychain())}, opt.Remote...)
	if opt.CACerts == nil {
		opt.CACerts = RootsPEM()
	}

	type built struct {
		param, pkg string
		repo       name.Repository
		idx        v1.ImageIndex
	}
	var (
		all    []built
		repos  = map[string]string{} // repository: the parameter it is for
		base   *baseImage
		docker *builder
	)
	for _, param := range slices.Sorted(maps.Keys(targets)) {
		pkg := targets[param]
		d, isDockerfile := dockerfileDir(dir, pkg)
		cmdName := filepath.Base(d)
		if !isDockerfile {
			importPath, err := mainPackage(ctx, dir, pkg)
			if err != nil {
				return nil, err
			}
			cmdName = commandName(importPath)
		}
		repo, err := name.NewRepository(opt.Registry+"/"+repoName(cmdName), name.StrictValidation)
		if err != nil {
			return nil, fmt.Errorf("build %s: image name: %w", pkg, err)
		}
		if other, ok := repos[repo.String()]; ok {
			return nil, fmt.Errorf("build: %s and %s would both be %s: give the commands different names", targets[other], pkg, repo)
		}
		repos[repo.String()] = param
		var idx v1.ImageIndex
		if isDockerfile {
			if docker == nil {
				if docker, err = dockerBuilder(ctx); err != nil {
					return nil, fmt.Errorf("build %s: %w", pkg, err)
				}
			}
			if idx, err = dockerfile(ctx, docker, d, platforms, tmp, progress); err != nil {
				return nil, err
			}
		} else {
			if base == nil {
				if base, err = loadBase(ctx, opt, ropts); err != nil {
					return nil, err
				}
			}
			if idx, err = goIndex(ctx, dir, pkg, cmdName, platforms, base, tmp, progress); err != nil {
				return nil, err
			}
		}
		all = append(all, built{param: param, pkg: pkg, repo: repo, idx: idx})
	}

	var results []Result
	for _, b := range all {
		r, err := push(ctx, b.repo, opt.Version, b.idx, opt.DryRun, ropts, progress)
		if err != nil {
			return nil, err
		}
		r.Param, r.Package = b.param, b.pkg
		results = append(results, r)
	}
	return results, nil
}

// goIndex builds pkg for each platform and packs the binaries over base.
func goIndex(ctx context.Context, dir, pkg, cmdName string, platforms []v1.Platform, base *baseImage, tmp string, progress func(string)) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for _, p := range platforms {
		progress(fmt.Sprintf("build %s for %s", pkg, p))
		out := filepath.Join(tmp, fmt.Sprintf("%s-%s-%s%s", cmdName, p.OS, p.Architecture, p.Variant))
		if err := binary(ctx, dir, pkg, p, out); err != nil {
			return nil, err
		}
		img, err := appImage(base, p, cmdName, out)
		if err != nil {
			return nil, fmt.Errorf("build %s for %s: %w", pkg, p, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	return idx, nil
}

// normalize sorts and dedupes platforms, so their order never changes a
// digest; images are Linux's.
func normalize(ps []v1.Platform) ([]v1.Platform, error) {
	if len(ps) == 0 {
		return nil, fmt.Errorf("build: no platforms to build for")
	}
	seen := map[string]bool{}
	var out []v1.Platform
	for _, p := range ps {
		if p.OS != "linux" || p.Architecture == "" {
			return nil, fmt.Errorf("build: platform %s: images are built for linux/ARCH", p)
		}
		if !seen[p.String()] {
			seen[p.String()] = true
			out = append(out, v1.Platform{OS: p.OS, Architecture: p.Architecture, Variant: p.Variant})
		}
	}
	slices.SortFunc(out, func(a, b v1.Platform) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// checkRegistry refuses a prefix whose first part is not a host: "myteam"
// would be Docker Hub's myteam/, public by default.
func checkRegistry(r string) error {
	host, _, _ := strings.Cut(r, "/")
	if r == "" || !(strings.ContainsAny(host, ".:") || host == "localhost") {
		return fmt.Errorf("build: registry %q: want HOST[:PORT][/PATH] (a host with a dot or a port, or localhost), where the cluster's nodes pull from", r)
	}
	if _, err := name.NewRepository(r+"/x", name.StrictValidation); err != nil {
		return fmt.Errorf("build: registry %q: %w", r, err)
	}
	return nil
}

// appImage is the base for p with the binary on top, run as the
// entrypoint.
func appImage(base *baseImage, p v1.Platform, cmdName, binary string) (v1.Image, error) {
	data, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	bin, err := release.Layer([]release.File{
		{Name: strings.TrimPrefix(AppDir, "/") + "/", Dir: true},
		{Name: strings.TrimPrefix(AppDir, "/") + "/" + cmdName, Data: data, Mode: 0o755},
	}, epoch)
	if err != nil {
		return nil, err
	}
	img, err := base.forPlatform(p)
	if err != nil {
		return nil, err
	}
	img, err = mutate.Append(img, mutate.Addendum{Layer: bin, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "tunnel deploy --build", Comment: cmdName}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	entrypoint := AppDir + "/" + cmdName
	if base.own {
		env := []string{"PATH=" + AppDir + ":/usr/local/bin:/usr/bin:/bin"}
		if base.certs {
			env = append(env, "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")
		}
		release.RunAsNonRoot(cf, p, epoch, entrypoint, env...)
	} else { // the base's user, folder and environment stay
		cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
		cf.Created = v1.Time{Time: epoch}
		cf.Config.Entrypoint, cf.Config.Cmd = []string{entrypoint}, nil
		cf.Config.Env = withPath(cf.Config.Env)
	}
	return mutate.ConfigFile(img, cf)
}

// withPath puts AppDir first on the base's PATH.
func withPath(env []string) []string {
	out := slices.Clone(env)
	for i, e := range out {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			out[i] = "PATH=" + AppDir + ":" + v
			return out
		}
	}
	return append(out, "PATH="+AppDir+":/usr/local/bin:/usr/bin:/bin")
}

var repoChars = regexp.MustCompile(`[^a-z0-9._-]+`)

// repoName is a repository name for a command: lower case, and what a
// registry refuses made a dash.
func repoName(cmd string) string {
	n := strings.Trim(repoChars.ReplaceAllString(strings.ToLower(cmd), "-"), "-._")
	if n == "" {
		n = "app"
	}
	return n
}
