package daemon

import "testing"

func TestPeerListenerAdmits(t *testing.T) {
	l := &peerListener{caller: Caller{UID: 1000, GID: 1000}, group: -1}
	g := &peerListener{caller: Caller{UID: 1000, GID: 1000}, group: 4242}
	for _, tc := range []struct {
		l    *peerListener
		p    peer
		want bool
	}{
		{l, peer{UID: 0, Known: true}, true},
		{l, peer{UID: 1000, GID: 1000, Known: true}, true},
		{l, peer{UID: 1001, GID: 1000, Known: true}, false}, // the same primary group is not the user
		{l, peer{UID: 1001, GID: 4242, Groups: []int{4242}, Known: true}, false},
		{g, peer{UID: 1001, GID: 100, Groups: []int{4242}, Known: true}, true},
		{g, peer{UID: 1001, GID: 4242, Known: true}, true},
		{g, peer{UID: 1002, GID: 100, Groups: []int{27}, Known: true}, false},
	} {
		if got := tc.l.allows(tc.p); got != tc.want {
			t.Errorf("group %d admits %+v: %v, want %v", tc.l.group, tc.p, got, tc.want)
		}
	}
}
