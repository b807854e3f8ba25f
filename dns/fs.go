package dns

import (
	"io/fs"
	"os"
)

// FS is the file access Direct needs; tests run the real code against
// t.TempDir() through it and inject failures.
type FS interface {
	ReadFile(name string) ([]byte, error)
	WriteFile(name string, data []byte, perm fs.FileMode) error // creates or truncates in place
	Chmod(name string, perm fs.FileMode) error
	Rename(oldpath, newpath string) error
	Remove(name string) error
	Lstat(name string) (fs.FileInfo, error)
	Readlink(name string) (string, error)
	Symlink(target, name string) error
	MkdirAll(path string, perm fs.FileMode) error
}

// OSFS is FS on the real filesystem.
type OSFS struct{}

func (OSFS) ReadFile(name string) ([]byte, error) { return os.ReadFile(name) }
func (OSFS) WriteFile(name string, data []byte, perm fs.FileMode) error {
	return os.WriteFile(name, data, perm)
}
func (OSFS) Chmod(name string, perm fs.FileMode) error { return os.Chmod(name, perm) }
func (OSFS) Rename(oldpath, newpath string) error      { return os.Rename(oldpath, newpath) }
func (OSFS) Remove(name string) error                  { return os.Remove(name) }
func (OSFS) Lstat(name string) (fs.FileInfo, error)    { return os.Lstat(name) }
func (OSFS) Readlink(name string) (string, error)      { return os.Readlink(name) }
func (OSFS) Symlink(target, name string) error         { return os.Symlink(target, name) }
func (OSFS) MkdirAll(path string, perm fs.FileMode) error {
	return os.MkdirAll(path, perm)
}
