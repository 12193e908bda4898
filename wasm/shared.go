package wasm

import (
	"sync"

	"github.com/sluice-proxy/sluice/engine/observe"
)

// Shared data: process-wide key/value stores, one per vm_id, with
// compare-and-swap versions (Envoy's shared data).

type sharedValue struct {
	data []byte
	cas  uint32
}

var shared = struct {
	sync.Mutex
	byVM    map[string]map[string]*sharedValue
	nextCas uint32
}{byVM: map[string]map[string]*sharedValue{}}

func hGetSharedData(v *vm, s []uint64) result {
	key, ok := v.str(uint32(s[0]), uint32(s[1]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	shared.Lock()
	sv := shared.byVM[v.p.vmID][key]
	var data []byte
	var cas uint32
	if sv != nil {
		data, cas = sv.data, sv.cas
	}
	shared.Unlock()
	if sv == nil {
		return resultNotFound
	}
	if r := v.copyOut(data, uint32(s[2]), uint32(s[3])); r != resultOk {
		return r
	}
	if !v.mem.WriteUint32Le(uint32(s[4]), cas) {
		return resultInvalidMemoryAccess
	}
	return resultOk
}

// hSetSharedData stores a value; a non-zero cas must match the stored
// version or the call fails with CasMismatch.
func hSetSharedData(v *vm, s []uint64) result {
	key, ok1 := v.str(uint32(s[0]), uint32(s[1]))
	val, ok2 := v.bytes(uint32(s[2]), uint32(s[3]))
	if !ok1 || !ok2 {
		return resultInvalidMemoryAccess
	}
	cas := uint32(s[4])
	shared.Lock()
	defer shared.Unlock()
	m := shared.byVM[v.p.vmID]
	if m == nil {
		m = map[string]*sharedValue{}
		shared.byVM[v.p.vmID] = m
	}
	sv := m[key]
	if cas != 0 && (sv == nil || sv.cas != cas) {
		return resultCasMismatch
	}
	shared.nextCas++
	if shared.nextCas == 0 {
		shared.nextCas = 1
	}
	m[key] = &sharedValue{data: append([]byte(nil), val...), cas: shared.nextCas}
	return resultOk
}

// Shared queues: named per vm_id, process-wide. proxy_on_queue_ready goes
// to the root context of the VM that registered the queue last (each VM of
// a pool registers it in its on_vm_start; any of them may drain it).

type sharedQueue struct {
	id     uint32
	items  [][]byte
	owners []*vm
}

var queues = struct {
	sync.Mutex
	byName map[string]*sharedQueue // vm_id + "\x00" + name
	byID   map[uint32]*sharedQueue
	nextID uint32
}{byName: map[string]*sharedQueue{}, byID: map[uint32]*sharedQueue{}}

func hRegisterSharedQueue(v *vm, s []uint64) result {
	name, ok := v.str(uint32(s[0]), uint32(s[1]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	queues.Lock()
	key := v.p.vmID + "\x00" + name
	q := queues.byName[key]
	if q == nil {
		queues.nextID++
		q = &sharedQueue{id: queues.nextID}
		queues.byName[key] = q
		queues.byID[q.id] = q
	}
	live := q.owners[:0]
	for _, o := range q.owners {
		if !o.broken.Load() && o != v {
			live = append(live, o)
		}
	}
	q.owners = append(live, v)
	id := q.id
	queues.Unlock()
	if !v.mem.WriteUint32Le(uint32(s[2]), id) {
		return resultInvalidMemoryAccess
	}
	return resultOk
}

func hResolveSharedQueue(v *vm, s []uint64) result {
	vmID, ok1 := v.str(uint32(s[0]), uint32(s[1]))
	name, ok2 := v.str(uint32(s[2]), uint32(s[3]))
	if !ok1 || !ok2 {
		return resultInvalidMemoryAccess
	}
	if vmID == "" {
		vmID = v.p.vmID
	}
	queues.Lock()
	q := queues.byName[vmID+"\x00"+name]
	queues.Unlock()
	if q == nil {
		return resultNotFound
	}
	if !v.mem.WriteUint32Le(uint32(s[4]), q.id) {
		return resultInvalidMemoryAccess
	}
	return resultOk
}

func hEnqueueSharedQueue(v *vm, s []uint64) result {
	data, ok := v.bytes(uint32(s[1]), uint32(s[2]))
	if !ok {
		return resultInvalidMemoryAccess
	}
	queues.Lock()
	q := queues.byID[uint32(s[0])]
	if q == nil {
		queues.Unlock()
		return resultNotFound
	}
	q.items = append(q.items, append([]byte(nil), data...))
	var owner *vm
	for i := len(q.owners) - 1; i >= 0; i-- {
		if !q.owners[i].broken.Load() {
			owner = q.owners[i]
			break
		}
	}
	id := q.id
	queues.Unlock()
	if owner != nil && owner.ex.onQueueReady.fn != nil {
		// Not inline: the owner may be this very VM, whose lock we hold.
		go owner.rootCall(owner.ex.onQueueReady, uint64(owner.root), uint64(id))
	}
	return resultOk
}

func hDequeueSharedQueue(v *vm, s []uint64) result {
	queues.Lock()
	q := queues.byID[uint32(s[0])]
	if q == nil {
		queues.Unlock()
		return resultNotFound
	}
	if len(q.items) == 0 {
		queues.Unlock()
		return resultEmpty
	}
	item := q.items[0]
	q.items[0] = nil
	q.items = q.items[1:]
	queues.Unlock()
	return v.copyOut(item, uint32(s[1]), uint32(s[2]))
}

// Metrics defined by guests live in the Store under "wasmcustom.", so they
// render in /stats and /stats/prometheus; ids are shared by every VM of
// every plugin on the same Store, so one id means one metric.

type guestMetric struct {
	kind      uint32
	counter   *observe.Counter
	gauge     *observe.Gauge
	histogram *observe.Histogram
}

type metricRegistry struct {
	mu      sync.Mutex
	scope   *observe.Scope
	byName  map[string]uint32
	metrics []guestMetric // id-1
}

var (
	registriesMu sync.Mutex
	registries   = map[*observe.Store]*metricRegistry{}
)

func metricsFor(st *observe.Store) *metricRegistry {
	registriesMu.Lock()
	defer registriesMu.Unlock()
	r := registries[st]
	if r == nil {
		r = &metricRegistry{scope: st.CustomScope("wasmcustom."), byName: map[string]uint32{}}
		registries[st] = r
	}
	return r
}

func (r *metricRegistry) define(kind uint32, name string) (uint32, result) {
	if kind > metricHistogram || name == "" {
		return 0, resultBadArgument
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	key := string(rune('0'+kind)) + name
	if id, ok := r.byName[key]; ok {
		return id, resultOk
	}
	m := guestMetric{kind: kind}
	switch kind {
	case metricCounter:
		m.counter = r.scope.Counter(name)
	case metricGauge:
		m.gauge = r.scope.Gauge(name)
	default:
		m.histogram = r.scope.Histogram(name)
	}
	r.metrics = append(r.metrics, m)
	id := uint32(len(r.metrics))
	r.byName[key] = id
	return id, resultOk
}

func (r *metricRegistry) lookup(id uint32) (guestMetric, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if id == 0 || int(id) > len(r.metrics) {
		return guestMetric{}, false
	}
	return r.metrics[id-1], true
}

func (r *metricRegistry) increment(id uint32, offset int64) result {
	m, ok := r.lookup(id)
	if !ok {
		return resultNotFound
	}
	switch m.kind {
	case metricCounter:
		if offset < 0 {
			return resultBadArgument
		}
		m.counter.Add(uint64(offset))
	case metricGauge:
		m.gauge.Add(offset)
	default:
		return resultBadArgument
	}
	return resultOk
}

func (r *metricRegistry) record(id uint32, value uint64) result {
	m, ok := r.lookup(id)
	if !ok {
		return resultNotFound
	}
	switch m.kind {
	case metricCounter:
		// A counter only goes up: recording sets it when higher.
		if cur := m.counter.Value(); value > cur {
			m.counter.Add(value - cur)
		}
	case metricGauge:
		m.gauge.Set(int64(value))
	default:
		m.histogram.Record(float64(value))
	}
	return resultOk
}

func (r *metricRegistry) get(id uint32) (uint64, result) {
	m, ok := r.lookup(id)
	if !ok {
		return 0, resultNotFound
	}
	switch m.kind {
	case metricCounter:
		return m.counter.Value(), resultOk
	case metricGauge:
		return uint64(m.gauge.Value()), resultOk
	}
	return 0, resultBadArgument
}
