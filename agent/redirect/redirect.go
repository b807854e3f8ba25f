//go:build linux

package redirect

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Install replaces tunnel's table in this network namespace with one
// that redirects ports, IPv4 and IPv6 alike (an inet table), in one
// transaction: a restarted init container leaves no second copy.
func Install(ports []Port) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: Table}
	c.AddTable(t) // so that the delete below has something to delete
	c.DelTable(t)
	t = c.AddTable(t)
	ch := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	for _, p := range ports {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: Rule(p)})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install the redirect rules (the container needs NET_ADMIN): %w", err)
	}
	return nil
}

// Rule is `meta l4proto tcp tcp dport APP redirect to :TO`.
func Rule(p Port) []expr.Any {
	port := func(n uint16) []byte { return binary.BigEndian.AppendUint16(nil, n) }
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port(p.App)},
		&expr.Immediate{Register: 1, Data: port(p.To)},
		&expr.Redir{RegisterProtoMin: 1},
	}
}
