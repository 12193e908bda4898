package upstream

import (
	"container/heap"
	"math/rand/v2"
	"sync/atomic"
)

// maxRRSchedule bounds the precomputed round robin cycle. Weights whose
// reduced sum exceeds it are scaled down (each host keeps at least one slot),
// which keeps the ratios within 1/slots of exact.
const maxRRSchedule = 1 << 16

// roundRobin is weighted round robin without locks: the cycle of one full
// round (sum of weights / gcd slots) is computed at Build by earliest
// deadline first with deadlines (k+½)/w, which interleaves hosts smoothly and
// gives host i exactly w_i slots per cycle. A pick is one atomic add.
type roundRobin struct {
	hosts []*Host
	sched []uint32
	_     [48]byte // keep next off the line of the read-only fields
	next  atomic.Uint64
}

func newRoundRobin(hosts []*Host) *roundRobin {
	w := hostWeights(hosts)
	g := w[0]
	for _, x := range w[1:] {
		g = gcd(g, x)
	}
	var total uint64
	for i := range w {
		w[i] /= g
		total += w[i]
	}
	if total > maxRRSchedule {
		var t uint64
		for i := range w {
			w[i] = max(1, w[i]*maxRRSchedule/total)
			t += w[i]
		}
		total = t
	}
	rr := &roundRobin{hosts: hosts, sched: make([]uint32, 0, total)}
	q := make(edfQueue, len(w))
	for i := range w {
		q[i] = edfEntry{idx: uint32(i), w: w[i]}
	}
	heap.Init(&q)
	for uint64(len(rr.sched)) < total {
		e := &q[0]
		rr.sched = append(rr.sched, e.idx)
		e.k++
		heap.Fix(&q, 0)
	}
	rr.next.Store(rand.Uint64()) // don't start every proxy on the same host
	return rr
}

func (rr *roundRobin) pick(_ *LBContext, _ int) *Host {
	n := rr.next.Add(1)
	return rr.hosts[rr.sched[n%uint64(len(rr.sched))]]
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// edfEntry is a host in the schedule builder: its next deadline is
// (2k+1)/(2w).
type edfEntry struct {
	idx uint32
	w   uint64
	k   uint64
}

type edfQueue []edfEntry

func (q edfQueue) Len() int { return len(q) }
func (q edfQueue) Less(i, j int) bool {
	a := (2*q[i].k + 1) * q[j].w
	b := (2*q[j].k + 1) * q[i].w
	if a != b {
		return a < b
	}
	return q[i].idx < q[j].idx
}
func (q edfQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *edfQueue) Push(x any)   { *q = append(*q, x.(edfEntry)) }
func (q *edfQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}
