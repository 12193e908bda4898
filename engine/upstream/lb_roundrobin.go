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
// deadline first, host i's k-th deadline being (k+φ_i)/w_i with phases
// φ_i = (2i+1)/2n spread over (0,1). That gives host i exactly w_i slots per
// cycle and interleaves hosts smoothly, across cycle boundaries too (5,1,1
// never sends more than 3 picks in a row to the heavy host). A pick is one
// atomic add.
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
		q[i] = edfEntry{idx: uint32(i), w: w[i], phase: 2*uint64(i) + 1, span: 2 * uint64(len(w))}
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
// (span*k + phase) / (span*w), span = 2n and phase = 2i+1.
type edfEntry struct {
	idx         uint32
	w, k        uint64
	phase, span uint64
}

func (e *edfEntry) num() uint64 { return e.span*e.k + e.phase }

type edfQueue []edfEntry

func (q edfQueue) Len() int { return len(q) }
func (q edfQueue) Less(i, j int) bool {
	a := q[i].num() * q[j].w
	b := q[j].num() * q[i].w
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
