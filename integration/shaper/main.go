// Command shaper is the lab's wide-area link: it holds every packet the
// kernel hands it on an NFQUEUE for a fixed delay, then lets it go, in
// order. `lab shape` starts it in a laptop's namespace behind iptables
// rules that queue what the laptop sends and receives (random loss comes
// from iptables' statistic match); this machine's kernel has no netem.
//
// It speaks nfnetlink_queue itself (mdlayher/netlink carries the messages):
// packets are queued with their metadata only, and a verdict on the
// highest id due accepts every packet before it too, so a constant delay
// costs one message per tick, not one per packet.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
)

// nfnetlink_queue's protocol (linux/netfilter/nfnetlink_queue.h).
const (
	netlinkNetfilter = 12
	subsysQueue      = 3
	msgPacket        = 0
	msgConfig        = 2
	msgVerdictBatch  = 3

	cfgCmd      = 1
	cfgParams   = 2
	cfgMaxLen   = 3
	cmdBind     = 1
	copyMeta    = 1
	attrPktHdr  = 1
	attrVerdict = 2
	nfAccept    = 1
)

func main() {
	queue := flag.Uint("queue", 0, "NFQUEUE number")
	delay := flag.Duration("delay", 10*time.Millisecond, "how long each packet is held")
	maxLen := flag.Uint("max", 1<<16, "packets held at most; the kernel drops past it")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log, uint16(*queue), *delay, uint32(*maxLen)); err != nil {
		log.Error("shaper", "err", err)
		os.Exit(1)
	}
}

func run(log *slog.Logger, queue uint16, delay time.Duration, maxLen uint32) error {
	c, err := netlink.Dial(netlinkNetfilter, nil)
	if err != nil {
		return fmt.Errorf("open nfnetlink: %w", err)
	}
	defer c.Close()
	_ = c.SetReadBuffer(16 << 20)
	_ = c.SetOption(netlink.NoENOBUFS, true)
	if err := configure(c, queue, maxLen); err != nil {
		return err
	}
	log.Info("holding packets", "queue", queue, "delay", delay)

	type held struct {
		id  uint32
		due time.Time
	}
	var mu sync.Mutex
	var fifo []held
	wake := make(chan struct{}, 1)
	go func() { // lets each packet go when it is due, in order
		for {
			mu.Lock()
			var next time.Time
			if len(fifo) > 0 {
				next = fifo[0].due
			}
			mu.Unlock()
			if next.IsZero() {
				<-wake
				continue
			}
			time.Sleep(time.Until(next))
			now := time.Now()
			mu.Lock()
			n := 0
			for n < len(fifo) && !fifo[n].due.After(now) {
				n++
			}
			last := fifo[n-1].id
			fifo = fifo[n:]
			mu.Unlock()
			if err := verdict(c, queue, last); err != nil {
				log.Error("verdict", "err", err)
			}
		}
	}()
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
		<-sig
		c.Close()
	}()
	for {
		msgs, err := c.Receive()
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("receive: %w", err)
		}
		now := time.Now()
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(subsysQueue<<8|msgPacket) || len(m.Data) < 4 {
				continue
			}
			ad, err := netlink.NewAttributeDecoder(m.Data[4:]) // past nfgenmsg
			if err != nil {
				continue
			}
			ad.ByteOrder = binary.BigEndian
			for ad.Next() {
				if ad.Type() == attrPktHdr && len(ad.Bytes()) >= 4 {
					id := binary.BigEndian.Uint32(ad.Bytes())
					mu.Lock()
					fifo = append(fifo, held{id, now.Add(delay)})
					mu.Unlock()
					select {
					case wake <- struct{}{}:
					default:
					}
				}
			}
		}
	}
}

// nfgen is nfnetlink's header: family, version, and the queue (big endian).
func nfgen(queue uint16) []byte {
	b := []byte{syscall.AF_UNSPEC, 0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], queue)
	return b
}

func request(c *netlink.Conn, queue uint16, typ uint16, attrs []byte) error {
	_, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(subsysQueue<<8 | typ), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(nfgen(queue), attrs...),
	})
	return err
}

// configure binds the queue and asks for metadata only.
func configure(c *netlink.Conn, queue uint16, maxLen uint32) error {
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(cfgCmd, []byte{cmdBind, 0, 0, 0})
	b, _ := ae.Encode()
	if err := request(c, queue, msgConfig, b); err != nil {
		return fmt.Errorf("bind NFQUEUE %d: %w", queue, err)
	}
	ae = netlink.NewAttributeEncoder()
	params := make([]byte, 5) // copy range (big endian), copy mode
	params[4] = copyMeta
	ae.Bytes(cfgParams, params)
	ml := make([]byte, 4)
	binary.BigEndian.PutUint32(ml, maxLen)
	ae.Bytes(cfgMaxLen, ml)
	b, _ = ae.Encode()
	if err := request(c, queue, msgConfig, b); err != nil {
		return fmt.Errorf("configure NFQUEUE %d: %w", queue, err)
	}
	return nil
}

// verdict accepts every packet of the queue up to id.
func verdict(c *netlink.Conn, queue uint16, id uint32) error {
	v := make([]byte, 8)
	binary.BigEndian.PutUint32(v[0:], nfAccept)
	binary.BigEndian.PutUint32(v[4:], id)
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(attrVerdict, v)
	b, _ := ae.Encode()
	_, err := c.Send(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(subsysQueue<<8 | msgVerdictBatch), Flags: netlink.Request},
		Data:   append(nfgen(queue), b...),
	})
	return err
}
