package dns

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync"
)

// ErrBackupMissing means resolv.conf carries our marker but the backup of the
// original is gone, so the original cannot be restored automatically.
var ErrBackupMissing = errors.New("the backup of the original resolv.conf is missing")

// Direct manages DNS by writing resolv.conf, as tailscale's direct manager
// does. Before its first change it copies the original to backupPath (a
// regular file byte for byte, a symlink as a symlink); restoring puts that
// copy back and removes it. All state is on disk, so a later run can repair
// what a crashed one left.
type Direct struct {
	logger     *slog.Logger
	fs         FS
	path       string
	backupPath string

	mu sync.Mutex // serializes file changes
}

var _ OSConfigurator = (*Direct)(nil)

// NewDirect manages the resolv.conf at path, keeping the original at
// backupPath. backupPath must be private to this network namespace: under
// `ip netns exec` only resolv.conf itself is per namespace, /etc is shared.
func NewDirect(logger *slog.Logger, fsys FS, path, backupPath string) (*Direct, error) {
	if path == "" || backupPath == "" || filepath.Clean(path) == filepath.Clean(backupPath) {
		return nil, fmt.Errorf("direct dns: resolv.conf %q and backup %q must be two different paths", path, backupPath)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if fsys == nil {
		fsys = OSFS{}
	}
	return &Direct{logger: logger.With("subsystem", "dns"), fs: fsys, path: path, backupPath: backupPath}, nil
}

// SupportsSplitDNS is false: resolv.conf sends every name to one resolver.
func (d *Direct) SupportsSplitDNS() bool { return false }

// SetDNS writes a resolv.conf naming cfg's nameservers and search domains; a
// zero cfg restores the original.
func (d *Direct) SetDNS(cfg OSConfig) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if cfg.IsZero() {
		_, err := d.restoreLocked()
		return err
	}
	if len(cfg.Nameservers) == 0 {
		return fmt.Errorf("set dns in %s: no nameserver given", d.path)
	}
	cur, err := d.snapshot(d.path)
	if err != nil {
		return fmt.Errorf("set dns: %w", err)
	}
	madeBackup := false
	if !cur.ours() {
		if err := d.backup(cur); err != nil {
			return fmt.Errorf("set dns: back up %s: %w", d.path, err)
		}
		madeBackup = true
	}
	orig, err := d.original()
	if err != nil {
		return fmt.Errorf("set dns: %w", err)
	}
	content := formatResolvConf(cfg, d.backupPath, parseResolvConf(orig.data).options)
	if err := d.writeFile(d.path, content, 0o644); err != nil {
		d.undoFailedWrite(cur, madeBackup)
		return fmt.Errorf("set dns: %w", err)
	}
	d.logger.Info("pointed resolv.conf at the tunnel", "path", d.path, "nameservers", cfg.Nameservers, "search", cfg.SearchDomains)
	return nil
}

// undoFailedWrite puts things back after a failed write of our resolv.conf:
// an in-place rewrite may have cut the file short.
func (d *Direct) undoFailedWrite(prev snapshot, madeBackup bool) {
	if now, err := d.snapshot(d.path); err == nil && prev.exists && prev.link == "" && !bytes.Equal(now.data, prev.data) {
		if err := d.fs.WriteFile(d.path, prev.data, prev.perm); err != nil {
			d.logger.Error("could not put resolv.conf back after a failed write", "path", d.path, "backup", d.backupPath, "err", err)
			return // keep the backup: it is the only copy left
		}
	}
	if madeBackup {
		d.fs.Remove(d.backupPath)
	}
}

// GetBaseConfig returns the nameservers and search domains of the original
// resolv.conf, read from the backup while ours is in place.
func (d *Direct) GetBaseConfig() (OSConfig, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, err := d.snapshot(d.path)
	if err == nil && s.ours() {
		s, err = d.original()
	}
	if err != nil {
		return OSConfig{}, fmt.Errorf("read base dns config: %w", err)
	}
	rc := parseResolvConf(s.data)
	return OSConfig{Nameservers: rc.nameservers, SearchDomains: rc.search}, nil
}

// Close restores the original resolv.conf.
func (d *Direct) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, err := d.restoreLocked()
	return err
}

// Repair restores the original resolv.conf if a crashed run left ours in
// place. It fails with ErrBackupMissing when ours is there without a backup;
// the caller decides what to do then.
func (d *Direct) Repair() (bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	repaired, err := d.restoreLocked()
	if repaired {
		d.logger.Info("restored resolv.conf left by an earlier run", "path", d.path)
	}
	return repaired, err
}

// RepairDirect is Repair for the daemon's start, before it has a Direct:
// it restores the resolv.conf at path from backupPath if a crashed run left
// ours in place, and says whether it did. It fails with ErrBackupMissing
// when it cannot.
func RepairDirect(logger *slog.Logger, fsys FS, path, backupPath string) (bool, error) {
	d, err := NewDirect(logger, fsys, path, backupPath)
	if err != nil {
		return false, err
	}
	return d.Repair()
}

// restoreLocked puts the original back if the file is ours, and removes the
// backup. If someone replaced our file meanwhile, theirs stays.
func (d *Direct) restoreLocked() (bool, error) {
	cur, err := d.snapshot(d.path)
	if err != nil {
		return false, fmt.Errorf("restore dns: %w", err)
	}
	bk, err := d.fs.Lstat(d.backupPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("restore dns: %w", err)
	}
	hasBackup := bk != nil
	if !cur.ours() {
		if hasBackup {
			// A crash before our write, or a newer file from someone else.
			d.logger.Info("removing stale resolv.conf backup", "backup", d.backupPath)
			if err := d.fs.Remove(d.backupPath); err != nil {
				return false, fmt.Errorf("restore dns: remove stale backup: %w", err)
			}
		}
		return false, nil
	}
	orig, err := d.original()
	if err != nil {
		return false, fmt.Errorf("restore dns: %w", err)
	}
	switch {
	case !orig.exists:
		err = d.fs.Remove(d.path)
	case orig.link != "":
		err = d.writeLink(d.path, orig)
	default:
		err = d.writeFile(d.path, orig.data, orig.perm)
	}
	if err != nil {
		return false, fmt.Errorf("restore dns: put back %s: %w", d.path, err)
	}
	if err := d.fs.Remove(d.backupPath); err != nil {
		return true, fmt.Errorf("restore dns: remove backup: %w", err)
	}
	d.logger.Info("restored resolv.conf", "path", d.path)
	return true, nil
}
