package upstream

import (
	"context"
	"fmt"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
)

func BenchmarkPick(b *testing.B) {
	weights := []uint32{1, 2, 3, 4, 1, 2, 3, 4}
	for _, policy := range allPolicies {
		c := lbCluster(b, policy, weights...)
		b.Run(string(policy), func(b *testing.B) {
			ctx := &LBContext{}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				ctx.Hash, ctx.HasHash = uint64(i)*0x9E3779B97F4A7C15, true
				if c.Pick(ctx) == nil {
					b.Fatal("nil")
				}
			}
		})
		b.Run(string(policy)+"/parallel", func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if c.Pick(nil) == nil {
						b.Fatal("nil")
					}
				}
			})
		})
	}
	b.Run("round_robin/exclude", func(b *testing.B) {
		c := lbCluster(b, config.LBRoundRobin, weights...)
		h0 := c.Hosts()[0]
		ctx := &LBContext{Exclude: func(h *Host) bool { return h == h0 }}
		b.ReportAllocs()
		for b.Loop() {
			c.Pick(ctx)
		}
	})
}

func BenchmarkAcquireReleaseIdle(b *testing.B) {
	srv := newTestServer(b)
	c, _ := poolCluster(b, nil, srv.addr())
	h := c.Hosts()[0]
	ctx := context.Background()
	conn := mustAcquire(b, h)
	conn.Release(true)
	b.ReportAllocs()
	for b.Loop() {
		conn, err := h.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		conn.Release(true)
	}
}

func BenchmarkAcquireReleaseIdleParallel(b *testing.B) {
	srv := newTestServer(b)
	c, _ := poolCluster(b, nil, srv.addr(), srv.addr(), srv.addr(), srv.addr())
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			conn, err := c.Pick(nil).Acquire(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			conn.Release(true)
		}
	})
}

func BenchmarkTryStartRequest(b *testing.B) {
	c := lbCluster(b, config.LBRoundRobin, 1)
	b.ReportAllocs()
	for b.Loop() {
		done, ok := c.TryStartRequest()
		if !ok {
			b.Fatal("refused")
		}
		done()
	}
}

func BenchmarkBuildMaglev(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ws := make([]uint32, n)
			for i := range ws {
				ws[i] = uint32(i%4 + 1)
			}
			hosts := lbCluster(b, config.LBRoundRobin, ws...).Hosts()
			for b.Loop() {
				newMaglev(hosts, DefaultMaglevTableSize)
			}
		})
	}
}
