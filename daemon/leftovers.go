package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"tunnel.dev/tunnel/agent/inject"
	"tunnel.dev/tunnel/preview"
	"tunnel.dev/tunnel/workload"
)

// replaceTimeout bounds one rollout of a replace or a restore.
const replaceTimeout = 3 * time.Minute

// leftover is one thing an intercept of this daemon changed in the
// cluster that must go with it: a workload it replaced (intercept
// --replace), or its preview route (--preview).
type leftover struct {
	Server    string `json:"server"` // the API server's URL
	Namespace string `json:"namespace"`
	Workload  string `json:"workload"` // workload.Ref's form
	Intercept string `json:"intercept"`
	Holder    string `json:"holder"`            // user@host, as the manager knows the intercept's
	Preview   bool   `json:"preview,omitempty"` // the intercept's preview route
}

// leftovers are written to a file in the daemon's run folder before the
// workload changes and taken off once it is put back: whatever ends the
// intercept (leave, quit, the command it ran exiting) puts the workload
// back, and a daemon that died first leaves the file for the next one to
// put back at its connect. Nothing is lost if the file is: the workload's
// own annotation says what to put back (tunnel uninstall --agent does).
type leftovers struct {
	path string
	log  *slog.Logger
	mu   sync.Mutex
}

func (r *leftovers) load() []leftover {
	var out []leftover
	if data, err := os.ReadFile(r.path); err == nil {
		_ = json.Unmarshal(data, &out)
	}
	return out
}

func (r *leftovers) save(list []leftover) error {
	if len(list) == 0 {
		err := os.Remove(r.path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	data, err := json.Marshal(list)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(r.path), 0o700); err != nil {
		return err
	}
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, r.path)
}

// replace writes the record down, then replaces the workload with the
// image of its own sidecar (never one a caller names: what the workload's
// pods run is the cluster's agent, or what its owners put there). The
// record stays while the workload may be left changed.
func (r *leftovers) replace(ctx context.Context, wc workload.Client, rec leftover) error {
	ref, err := workload.ParseRef(rec.Workload)
	if err != nil {
		return err
	}
	w, err := wc.Get(ctx, rec.Namespace, ref)
	if err != nil {
		return err
	}
	image := inject.SidecarImage(&w.Template)
	if image == "" && !workload.IsBatch(w.Kind) { // a Job or CronJob is suspended, and runs no image of tunnel's
		return fmt.Errorf("%s has no tunnel sidecar, whose image a replace runs", w.Describe())
	}
	if err := r.record(rec); err != nil {
		return fmt.Errorf("write down the workload to put back: %w", err)
	}
	changed, err := inject.Replace(ctx, wc, w, image, rec.Intercept, rec.Holder, replaceTimeout, func(s string) { r.log.Info(s) })
	if err != nil && !changed {
		r.drop(rec)
	}
	return err
}

// record writes rec down.
func (r *leftovers) record(rec leftover) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := r.load()
	if !slices.Contains(list, rec) {
		list = append(list, rec)
	}
	return r.save(list)
}

// putBack restores the workloads of the records match picks (and takes
// their preview routes away), and returns
// one sentence for each it put back; a record is dropped once its
// workload is back (or has nothing to put back).
func (r *leftovers) putBack(ctx context.Context, wc workload.Client, match func(leftover) bool) ([]string, error) {
	r.mu.Lock()
	list := r.load()
	r.mu.Unlock()
	var done []string
	var errs []error
	for _, rec := range list {
		if !match(rec) {
			continue
		}
		if rec.Preview {
			if err := preview.Close(ctx, wc.Dyn, rec.Namespace, rec.Intercept); errors.Is(err, preview.ErrNotOurs) {
				r.log.Warn("a preview route of this name is not ours; forgotten", "err", err)
				r.drop(rec)
				continue
			} else if err != nil {
				errs = append(errs, err)
				continue
			}
			r.drop(rec)
			done = append(done, fmt.Sprintf("Took away the preview route of intercept %s in namespace %s.", rec.Intercept, rec.Namespace))
			continue
		}
		ref, err := workload.ParseRef(rec.Workload)
		if err != nil {
			r.drop(rec)
			continue
		}
		back, err := inject.Restore(ctx, wc, rec.Namespace, ref, rec.Intercept, rec.Holder, replaceTimeout, func(s string) { r.log.Info(s) })
		if err != nil {
			errs = append(errs, fmt.Errorf("put %s back: %w", ref.Describe(rec.Namespace), err))
			continue
		}
		r.drop(rec)
		if back {
			done = append(done, fmt.Sprintf("Put %s back as it was before intercept %s replaced it.", ref.Describe(rec.Namespace), rec.Intercept))
		}
	}
	return done, errors.Join(errs...)
}

func (r *leftovers) drop(rec leftover) {
	r.mu.Lock()
	defer r.mu.Unlock()
	list := slices.DeleteFunc(r.load(), func(x leftover) bool { return x == rec })
	if err := r.save(list); err != nil {
		r.log.Warn("forget a replaced workload", "workload", rec.Workload, "err", err)
	}
}
