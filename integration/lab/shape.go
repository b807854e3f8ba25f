//go:build linux

package lab

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// A laptop's link as a user's is: a round trip of tens of milliseconds and
// some loss, between the laptop and everything it reaches. This machine's
// kernel has no netem; the lab shapes a link with what it has: iptables'
// statistic match drops packets at random, and NFQUEUE hands every packet
// to the lab's shaper (integration/shaper), which holds it for half the
// round trip each way. Both apply to the laptop's eth0 only, never to its
// loopback or its TUN device.

// ShapeOptions are a link's round trip and loss; zero for both is a plain
// link.
type ShapeOptions struct {
	RTT  time.Duration
	Loss float64 // of the packets each way, 0 to 0.5
}

// shapeChains are the laptop's mangle chains: what it sends, what it gets.
var shapeChains = [2]string{"TLAB-SHAPE-OUT", "TLAB-SHAPE-IN"}

// Shape makes a laptop's link as opt says, replacing any earlier shape.
func (l *Lab) Shape(ctx context.Context, name string, opt ShapeOptions) error {
	if err := requireRoot("shape"); err != nil {
		return err
	}
	if opt.RTT < 0 || opt.RTT > 10*time.Second || opt.Loss < 0 || opt.Loss > 0.5 {
		return fmt.Errorf("shape %s: want a round trip of 0 to 10s and a loss of 0 to 50%%, not %s and %g", name, opt.RTT, opt.Loss)
	}
	lp, err := ensureLaptop(ctx, l.Paths, name)
	if err != nil {
		return err
	}
	ipt := func(args ...string) error {
		_, err := run(ctx, "ip", append([]string{"netns", "exec", lp.Netns, "iptables", "-w", "-t", "mangle"}, args...)...)
		return err
	}
	shaper := l.shaper(lp)
	// Off: the rules, then the shaper they queue to. First, and again if
	// shaping fails half-way, so no laptop is left with half a link.
	off := func() error {
		_ = ipt("-D", "OUTPUT", "-o", "eth0", "-j", shapeChains[0])
		_ = ipt("-D", "PREROUTING", "-i", "eth0", "-j", shapeChains[1])
		for _, c := range shapeChains {
			_ = ipt("-F", c)
			_ = ipt("-X", c)
		}
		return stop(l.Paths, shaper, 5*time.Second)
	}
	if err := off(); err != nil {
		return err
	}
	if opt.RTT == 0 && opt.Loss == 0 {
		return nil
	}
	if err := l.shapeOn(ctx, shaper, opt, ipt); err != nil {
		return errors.Join(err, off())
	}
	return nil
}

// shapeOn starts the shaper and adds the rules that feed it.
func (l *Lab) shapeOn(ctx context.Context, shaper component, opt ShapeOptions, ipt func(...string) error) error {
	if opt.RTT > 0 {
		shaper.args = []string{"-queue", "0", "-delay", (opt.RTT / 2).String()}
		if err := start(ctx, l.Paths, shaper); err != nil {
			return err
		}
	}
	for _, c := range shapeChains {
		if err := ipt("-N", c); err != nil {
			return err
		}
		if opt.Loss > 0 {
			if err := ipt("-A", c, "-m", "statistic", "--mode", "random", "--probability", fmt.Sprintf("%.4f", opt.Loss), "-j", "DROP"); err != nil {
				return err
			}
		}
		if opt.RTT > 0 {
			if err := ipt("-A", c, "-j", "NFQUEUE", "--queue-num", "0"); err != nil {
				return err
			}
		}
	}
	if err := ipt("-A", "OUTPUT", "-o", "eth0", "-j", shapeChains[0]); err != nil {
		return err
	}
	return ipt("-A", "PREROUTING", "-i", "eth0", "-j", shapeChains[1])
}

// shaper is the laptop's shaper process, a component of the lab's own.
func (l *Lab) shaper(lp Laptop) component {
	return component{
		name: "shaper-" + lp.Name, bin: l.Paths.state("bin", "shaper"), netns: lp.Netns,
		// Ready once the queue is bound: the kernel lists it.
		ready: func(ctx context.Context) error {
			out, err := run(ctx, "ip", "netns", "exec", lp.Netns, "cat", "/proc/net/netfilter/nfnetlink_queue")
			if err != nil {
				return err
			}
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) > 0 && f[0] == "0" {
					return nil
				}
			}
			return errors.New("queue 0 is not bound yet")
		},
		timeout: 10 * time.Second,
	}
}
