package dns

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestDirectWriteFailuresLeaveTheOriginal(t *testing.T) {
	isTemp := func(name, of string) bool {
		return filepath.Dir(name) == filepath.Dir(of) && strings.HasPrefix(filepath.Base(name), "."+filepath.Base(of)+".tunnel-")
	}
	tests := []struct {
		name  string
		fault func(m machine, fsys *faultFS)
	}{
		{"temp file write fails", func(m machine, fsys *faultFS) {
			fsys.writeFile = func(name string, data []byte, perm fs.FileMode) error {
				if isTemp(name, m.path) {
					os.WriteFile(name, data[:len(data)/2], perm) // a partial temp file
					return syscall.ENOSPC
				}
				return os.WriteFile(name, data, perm)
			}
		}},
		{"chmod fails", func(m machine, fsys *faultFS) {
			fsys.chmod = func(name string) error {
				if isTemp(name, m.path) {
					return syscall.EPERM
				}
				return nil
			}
		}},
		{"rename fails", func(m machine, fsys *faultFS) {
			fsys.rename = func(_, newpath string) error {
				if newpath == m.path {
					return syscall.EACCES
				}
				return nil
			}
		}},
		{"backup write fails", func(m machine, fsys *faultFS) {
			fsys.writeFile = func(name string, data []byte, perm fs.FileMode) error {
				if isTemp(name, m.backup) {
					return syscall.EROFS
				}
				return os.WriteFile(name, data, perm)
			}
		}},
		{"in-place rewrite fails halfway", func(m machine, fsys *faultFS) {
			fsys.rename = func(_, newpath string) error {
				if newpath == m.path {
					return syscall.EBUSY
				}
				return nil
			}
			failed := false
			fsys.writeFile = func(name string, data []byte, perm fs.FileMode) error {
				if name == m.path && !failed {
					failed = true
					os.WriteFile(name, data[:10], perm)
					return syscall.EIO
				}
				return os.WriteFile(name, data, perm)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(t)
			os.WriteFile(m.path, []byte(nmResolvConf), 0o644)
			before := stateOf(t, m.path)
			fsys := &faultFS{}
			tt.fault(m, fsys)
			d, _ := NewDirect(testLogger(t), fsys, m.path, m.backup)
			if err := d.SetDNS(ourConfig); err == nil {
				t.Fatal("SetDNS succeeded despite the fault")
			}
			if got := stateOf(t, m.path); got != before {
				t.Errorf("resolv.conf changed to %+v", got)
			}
			if stateOf(t, m.backup).exists {
				t.Error("backup left behind")
			}
			noTempFiles(t, m)
		})
	}
}

// A failed restore keeps the backup, so a later Close or Repair can finish.
func TestDirectFailedRestoreKeepsBackup(t *testing.T) {
	m := newMachine(t)
	os.WriteFile(m.path, []byte(nmResolvConf), 0o644)
	fsys := &faultFS{}
	d, _ := NewDirect(testLogger(t), fsys, m.path, m.backup)
	if err := d.SetDNS(ourConfig); err != nil {
		t.Fatal(err)
	}
	fsys.rename = func(string, string) error { return syscall.EACCES }
	if err := d.Close(); err == nil {
		t.Fatal("Close succeeded despite the fault")
	}
	if !hasMarker([]byte(stateOf(t, m.path).data)) || stateOf(t, m.backup).data != nmResolvConf {
		t.Fatal("failed restore lost track of the original")
	}
	fsys.rename = nil
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if got := stateOf(t, m.path).data; got != nmResolvConf {
		t.Errorf("restored:\n%s", got)
	}
}

func TestDirectRepair(t *testing.T) {
	tests := []struct {
		name         string
		setup        func(t *testing.T, m machine)
		wantRepaired bool
		wantErr      error
		want         string // resolv.conf afterwards
	}{
		{
			name: "crash while ours was in place",
			setup: func(t *testing.T, m machine) {
				d, _ := NewDirect(testLogger(t), OSFS{}, m.path, m.backup)
				if err := d.SetDNS(ourConfig); err != nil {
					t.Fatal(err)
				}
				// and the process dies without Close
			},
			wantRepaired: true,
			want:         nmResolvConf,
		},
		{
			name: "ours in place but the backup is gone",
			setup: func(t *testing.T, m machine) {
				os.WriteFile(m.path, formatResolvConf(ourConfig, m.backup, nil), 0o644)
				os.Remove(m.backup)
			},
			wantErr: ErrBackupMissing,
			want:    string(formatResolvConf(ourConfig, "BACKUP", nil)),
		},
		{
			name: "crash after the backup, before our write",
			setup: func(t *testing.T, m machine) {
				os.WriteFile(m.backup, []byte(nmResolvConf), 0o644)
			},
			want: nmResolvConf,
		},
		{
			name: "someone rewrote resolv.conf while we ran",
			setup: func(t *testing.T, m machine) {
				d, _ := NewDirect(testLogger(t), OSFS{}, m.path, m.backup)
				d.SetDNS(ourConfig)
				os.WriteFile(m.path, []byte("nameserver 10.9.9.9\n"), 0o644)
			},
			want: "nameserver 10.9.9.9\n",
		},
		{
			name:  "nothing to do",
			setup: func(t *testing.T, m machine) {},
			want:  nmResolvConf,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMachine(t)
			os.WriteFile(m.path, []byte(nmResolvConf), 0o644)
			tt.setup(t, m)
			d, _ := NewDirect(testLogger(t), OSFS{}, m.path, m.backup)
			repaired, err := d.Repair()
			if repaired != tt.wantRepaired || !errors.Is(err, tt.wantErr) {
				t.Fatalf("Repair() = %v, %v; want %v, %v", repaired, err, tt.wantRepaired, tt.wantErr)
			}
			want := strings.ReplaceAll(tt.want, "BACKUP", m.backup)
			if got := stateOf(t, m.path).data; got != want {
				t.Errorf("resolv.conf:\n%s\nwant:\n%s", got, want)
			}
			if tt.wantErr == nil && stateOf(t, m.backup).exists {
				t.Error("backup left behind")
			}
			if repaired, err := d.Repair(); repaired || !errors.Is(err, tt.wantErr) {
				t.Errorf("second Repair() = %v, %v", repaired, err)
			}
		})
	}
}

// With ours in place and no backup, nothing may overwrite the evidence.
func TestDirectBackupMissing(t *testing.T) {
	m := newMachine(t)
	ours := formatResolvConf(ourConfig, m.backup, nil)
	os.WriteFile(m.path, ours, 0o644)
	d, _ := NewDirect(testLogger(t), OSFS{}, m.path, m.backup)
	for name, err := range map[string]error{
		"SetDNS": d.SetDNS(ourConfig),
		"Close":  d.Close(),
		"GetBaseConfig": func() error {
			_, err := d.GetBaseConfig()
			return err
		}(),
	} {
		if !errors.Is(err, ErrBackupMissing) {
			t.Errorf("%s: %v, want ErrBackupMissing", name, err)
		} else if !strings.Contains(err.Error(), m.backup) {
			t.Errorf("%s: error %q does not name the backup", name, err)
		}
	}
	if got := stateOf(t, m.path).data; got != string(ours) {
		t.Errorf("resolv.conf changed:\n%s", got)
	}
}

func TestRepairDirect(t *testing.T) {
	m := newMachine(t)
	os.WriteFile(m.path, []byte(nmResolvConf), 0o644)
	d, _ := NewDirect(testLogger(t), nil, m.path, m.backup)
	if err := d.SetDNS(ourConfig); err != nil {
		t.Fatal(err)
	}
	if repaired, err := RepairDirect(testLogger(t), OSFS{}, m.path, m.backup); err != nil || !repaired {
		t.Fatalf("repair: %v %v", repaired, err)
	}
	if got := stateOf(t, m.path).data; got != nmResolvConf {
		t.Errorf("repaired:\n%s", got)
	}
	os.WriteFile(m.path, formatResolvConf(ourConfig, m.backup, nil), 0o644)
	if _, err := RepairDirect(testLogger(t), OSFS{}, m.path, m.backup); !errors.Is(err, ErrBackupMissing) {
		t.Errorf("without a backup: %v, want ErrBackupMissing", err)
	}
	if _, err := RepairDirect(nil, nil, m.path, m.path); err == nil {
		t.Error("RepairDirect with one path for both succeeded")
	}
}
