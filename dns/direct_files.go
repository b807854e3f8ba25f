package dns

import (
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"syscall"
)

// snapshot is what is at a path: a file's bytes and mode, or a symlink's
// target and the bytes behind it.
type snapshot struct {
	exists bool
	link   string // symlink target, if it is a symlink
	data   []byte
	perm   fs.FileMode
}

// ours reports whether the file is one we wrote; ours are never symlinks.
func (s snapshot) ours() bool {
	return s.exists && s.link == "" && hasMarker(s.data)
}

func (d *Direct) snapshot(name string) (snapshot, error) {
	fi, err := d.fs.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return snapshot{}, nil
	}
	if err != nil {
		return snapshot{}, err
	}
	s := snapshot{exists: true, perm: fi.Mode().Perm()}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if s.link, err = d.fs.Readlink(name); err != nil {
			return snapshot{}, err
		}
		// A dangling link has no bytes; that is not an error.
		target := s.link
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(d.path), target) // relative to resolv.conf's folder
		}
		if s.data, err = d.fs.ReadFile(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return snapshot{}, err
		}
		return s, nil
	}
	if s.data, err = d.fs.ReadFile(name); err != nil {
		return snapshot{}, err
	}
	return s, nil
}

// backup copies what is at the resolv.conf path to the backup path.
func (d *Direct) backup(cur snapshot) error {
	if err := d.fs.MkdirAll(filepath.Dir(d.backupPath), 0o755); err != nil {
		return err
	}
	switch {
	case !cur.exists:
		return d.writeFile(d.backupPath, absentMarker, 0o644)
	case cur.link != "":
		tmp := tempName(d.backupPath)
		if err := d.fs.Symlink(cur.link, tmp); err != nil {
			return err
		}
		if err := d.fs.Rename(tmp, d.backupPath); err != nil {
			d.fs.Remove(tmp)
			return err
		}
		return nil
	default:
		return d.writeFile(d.backupPath, cur.data, cur.perm)
	}
}

// original is what was at the resolv.conf path before us, from the backup.
func (d *Direct) original() (snapshot, error) {
	s, err := d.snapshot(d.backupPath)
	if err != nil {
		return snapshot{}, fmt.Errorf("read backup: %w", err)
	}
	if !s.exists {
		return snapshot{}, fmt.Errorf("%s was written by tunnel but %s is gone; restore the original by hand or delete %s: %w",
			d.path, d.backupPath, d.path, ErrBackupMissing)
	}
	if s.link == "" && string(s.data) == string(absentMarker) {
		return snapshot{}, nil
	}
	return s, nil
}

// writeFile replaces name atomically: a temp file in the same folder, chmod,
// rename. When name is a mount point (resolv.conf bind-mounted by `ip netns
// exec` or a container runtime) rename fails with EBUSY or EXDEV, and it is
// rewritten in place instead.
func (d *Direct) writeFile(name string, data []byte, perm fs.FileMode) error {
	tmp := tempName(name)
	if err := d.fs.WriteFile(tmp, data, perm); err != nil {
		d.fs.Remove(tmp)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := d.fs.Chmod(tmp, perm); err != nil {
		d.fs.Remove(tmp)
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	err := d.fs.Rename(tmp, name)
	if err == nil {
		return nil
	}
	d.fs.Remove(tmp)
	if !isMountPointErr(err) {
		return fmt.Errorf("replace %s: %w", name, err)
	}
	d.logger.Debug("file is a mount point; rewriting it in place", "path", name)
	if err := d.fs.WriteFile(name, data, perm); err != nil {
		return fmt.Errorf("rewrite %s in place: %w", name, err)
	}
	return nil
}

// writeLink puts the symlink s back at name, or its bytes if name is a mount point.
func (d *Direct) writeLink(name string, s snapshot) error {
	tmp := tempName(name)
	if err := d.fs.Symlink(s.link, tmp); err != nil {
		return fmt.Errorf("symlink %s: %w", tmp, err)
	}
	err := d.fs.Rename(tmp, name)
	if err == nil {
		return nil
	}
	d.fs.Remove(tmp)
	if !isMountPointErr(err) {
		return fmt.Errorf("replace %s: %w", name, err)
	}
	return d.fs.WriteFile(name, s.data, 0o644)
}

func isMountPointErr(err error) bool {
	return errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EXDEV)
}

// tempName is a fresh name beside name; random, because several network
// namespaces may share the folder.
func tempName(name string) string {
	return filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".tunnel-"+strconv.FormatUint(rand.Uint64(), 36))
}
