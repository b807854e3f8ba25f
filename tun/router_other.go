//go:build !linux

package tun

import (
	"errors"
	"log/slog"
	"net/netip"
	"runtime"
)

var errNoRouter = errors.New("routes on " + runtime.GOOS + " are not supported yet")

// Router is Linux-only so far; elsewhere it says so.
type Router struct{}

func NewRouter(*slog.Logger, string) (*Router, error) { return nil, errNoRouter }
func (r *Router) AddAddress(netip.Prefix, bool) error { return errNoRouter }
func (r *Router) Set([]netip.Prefix) error            { return errNoRouter }
func (r *Router) Close() error                        { return nil }
func SystemRoutes() ([]Route, error)                  { return nil, errNoRouter }
