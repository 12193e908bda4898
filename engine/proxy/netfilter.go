package proxy

// Running network filters (the contract is in engine/stream/network.go) on
// a proxied TCP connection: each direction reads into a pooled
// stream.Buffer, passes it through the filters under the connection's lock
// (downstream bytes in chain order, upstream bytes in reverse), and writes
// what is left to the other side.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// netReadSize is how much one read of a filtered connection takes.
const netReadSize = 16 << 10

type netFilterSlot struct {
	name    string
	factory stream.NetworkFactory
}

// compileNetworkFilters compiles a chain's network filters with the
// compilers registered for their types; an unknown type is an error
// naming it.
func compileNetworkFilters(env *Env, filters []*config.NetworkFilter) ([]netFilterSlot, error) {
	var out []netFilterSlot
	for i, f := range filters {
		if f == nil {
			return nil, fmt.Errorf("proxy: network filter %d: empty", i)
		}
		c, ok := env.Registry.NetworkFilter(f.TypeURL)
		if !ok {
			return nil, fmt.Errorf("proxy: network filter %d (%s): unknown network filter type %q", i, f.Name, f.TypeURL)
		}
		fac, err := c.CompileNetworkFilter(f.Config)
		if err != nil {
			return nil, fmt.Errorf("proxy: network filter %d (%s): %w", i, f.Name, err)
		}
		out = append(out, netFilterSlot{name: f.Name, factory: fac})
	}
	return out, nil
}

// Directions of a filtered connection.
const (
	dirDownstream = 0 // bytes from the client: filters in order
	dirUpstream   = 1 // bytes from the upstream: filters in reverse
)

// netChain is the network filters of one connection.
type netChain struct {
	s       *tcpSession
	slots   []netFilterSlot
	filters []stream.NetworkFilter

	mu sync.Mutex // one callback at a time
	// hold is, per direction, the position (in that direction's order)
	// of the filter that stopped, or -1; held is the bytes held there.
	hold [2]int
	held [2]*stream.Buffer
}

func newNetChain(s *tcpSession, slots []netFilterSlot) *netChain {
	c := &netChain{s: s, slots: slots, filters: make([]stream.NetworkFilter, len(slots)), hold: [2]int{-1, -1}}
	for i, sl := range slots {
		c.filters[i] = sl.factory.NewNetworkFilter(s)
	}
	return c
}

// call runs one callback, turning a panic into a closed connection.
func (c *netChain) call(i int, fn func(f stream.NetworkFilter) stream.NetworkStatus) (st stream.NetworkStatus) {
	defer func() {
		if r := recover(); r != nil {
			c.s.p.log.Error("network filter panicked", "filter", c.slots[i].name, "conn", c.s.info.ID, "panic", fmt.Sprint(r))
			c.s.abort()
			st = stream.NetworkStopIteration
		}
	}()
	return fn(c.filters[i])
}

// newConnection runs OnNewConnection on every filter; false means the
// connection is refused.
func (c *netChain) newConnection() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.filters {
		st := c.call(i, func(f stream.NetworkFilter) stream.NetworkStatus { return f.OnNewConnection() })
		if c.s.aborted.Load() || st != stream.NetworkContinue {
			return false
		}
	}
	return true
}

// run passes b (owned by the chain from now on) through the filters of
// direction dir. It returns what to write on, or nil when the bytes are
// held at a filter; ok is false when the connection must close.
func (c *netChain) run(dir int, b *stream.Buffer, end bool) (out *stream.Buffer, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.filters)
	for pos := 0; pos < n; pos++ {
		i := pos
		if dir == dirUpstream {
			i = n - 1 - pos
		}
		if pos == c.hold[dir] {
			h := c.held[dir]
			h.Append(b.Bytes())
			stream.PutBuffer(b)
			b, c.held[dir], c.hold[dir] = h, nil, -1
		}
		st := c.call(i, func(f stream.NetworkFilter) stream.NetworkStatus {
			if dir == dirDownstream {
				return f.OnDownstreamData(b, end)
			}
			return f.OnUpstreamData(b, end)
		})
		if c.s.aborted.Load() {
			stream.PutBuffer(b)
			return nil, false
		}
		if st == stream.NetworkStopIteration {
			if end {
				// Nothing more will come to continue with.
				c.s.p.log.Debug("network filter stopped at end of stream: closing", "filter", c.slots[i].name, "conn", c.s.info.ID)
				stream.PutBuffer(b)
				return nil, false
			}
			c.hold[dir], c.held[dir] = pos, b
			return nil, true
		}
	}
	return b, true
}

// close runs OnClose on every filter and drops held bytes.
func (c *netChain) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.filters {
		c.call(i, func(f stream.NetworkFilter) stream.NetworkStatus {
			f.OnClose()
			return stream.NetworkContinue
		})
	}
	for d, h := range c.held {
		if h != nil {
			stream.PutBuffer(h)
			c.held[d] = nil
		}
	}
}

// errFilterClosed ends a direction whose filters closed the connection.
var errFilterClosed = errors.New("proxy: connection closed by a network filter")

// filtered copies through the network filters. It returns nil when src
// reached EOF and the filters let the end through.
func (d *tcpDir) filtered() error {
	dir := dirUpstream
	if d.upstreamBound {
		dir = dirDownstream
	}
	for {
		b := stream.GetBuffer()
		n, err := b.ReadOnce(d.src, netReadSize)
		if n > 0 {
			d.s.activity.Add(uint64(n))
			if d.upstreamBound {
				d.s.rx.Add(int64(n))
				d.s.p.stats.rxBytes.Add(uint64(n))
			} else {
				d.s.cluster.bytes.RxBytes.Add(uint64(n))
			}
		}
		end := err == io.EOF
		if n == 0 && !end {
			stream.PutBuffer(b)
			if err == nil {
				continue
			}
			return err
		}
		out, ok := d.s.chain.run(dir, b, end)
		if !ok {
			return errFilterClosed
		}
		if out != nil {
			werr := d.write(out.Bytes())
			stream.PutBuffer(out)
			if werr != nil {
				return werr
			}
		}
		switch {
		case end:
			return nil
		case err != nil:
			return err
		}
	}
}

// write writes filtered bytes on, counting what was sent.
func (d *tcpDir) write(p []byte) error {
	if len(p) == 0 {
		return nil
	}
	n, err := d.dst.Write(p)
	if d.upstreamBound {
		d.s.cluster.bytes.TxBytes.Add(uint64(n))
	} else {
		d.s.tx.Add(int64(n))
		d.s.p.stats.txBytes.Add(uint64(n))
	}
	return err
}

// The network filter callbacks of a connection.

func (s *tcpSession) Context() context.Context          { return s.ctx }
func (s *tcpSession) DynamicMetadata() *stream.Metadata { return &s.meta }
func (s *tcpSession) Close()                            { s.abort() }

func (s *tcpSession) Logger() *slog.Logger {
	return s.p.log.With("conn", s.info.ID)
}

func (s *tcpSession) WriteDownstream(p []byte) error {
	n, err := s.down.Write(p)
	s.tx.Add(int64(n))
	s.p.stats.txBytes.Add(uint64(n))
	if err != nil {
		return fmt.Errorf("proxy: writing downstream: %w", err)
	}
	return nil
}

func (s *tcpSession) WriteUpstream(p []byte) error {
	s.mu.Lock()
	up := s.up
	if up == nil {
		s.queued = append(s.queued, p...)
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	n, err := up.Conn.Write(p)
	s.cluster.bytes.TxBytes.Add(uint64(n))
	if err != nil {
		return fmt.Errorf("proxy: writing upstream: %w", err)
	}
	return nil
}
