package rules

import (
	"container/list"
	"hash/maphash"
	"math"
	"sync"
	"time"
)

const limiterShards = 16

// limiter is the state of one `ratelimit` action: token buckets of burst
// tokens refilled at rate tokens per nanosecond, one per key, at most
// maxKeys of them (least recently used evicted first). Keys spread over
// shards, each with its own mutex, so unrelated keys do not contend.
type limiter struct {
	burst float64
	rate  float64 // tokens per nanosecond
	epoch time.Time
	seed  maphash.Seed

	perShard int
	shards   [limiterShards]limiterShard
}

type limiterShard struct {
	mu   sync.Mutex
	m    map[string]*list.Element // of *bucket
	lru  list.List                // front: most recently used
	_pad [40]byte                 // keep shards on separate cache lines
}

type bucket struct {
	key    string
	tokens float64
	last   int64 // nanoseconds since epoch
}

func newLimiter(count int, per time.Duration, maxKeys int) *limiter {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	l := &limiter{
		burst:    float64(count),
		rate:     float64(count) / float64(per),
		epoch:    time.Now(),
		seed:     maphash.MakeSeed(),
		perShard: max(1, maxKeys/limiterShards),
	}
	for i := range l.shards {
		l.shards[i].m = map[string]*list.Element{}
	}
	return l
}

// take takes a token for key. When the bucket is empty it reports how long
// until the next token.
func (l *limiter) take(key string) (ok bool, wait time.Duration) {
	now := int64(time.Since(l.epoch))
	sh := &l.shards[0]
	if key != "" {
		sh = &l.shards[maphash.String(l.seed, key)%limiterShards]
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	var b *bucket
	if e, found := sh.m[key]; found {
		sh.lru.MoveToFront(e)
		b = e.Value.(*bucket)
		b.tokens = math.Min(l.burst, b.tokens+float64(now-b.last)*l.rate)
		b.last = now
	} else {
		if sh.lru.Len() >= l.perShard {
			old := sh.lru.Back()
			sh.lru.Remove(old)
			delete(sh.m, old.Value.(*bucket).key)
		}
		b = &bucket{key: key, tokens: l.burst, last: now}
		sh.m[key] = sh.lru.PushFront(b)
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration(math.Ceil((1 - b.tokens) / l.rate))
}

// keys reports how many buckets exist (tests).
func (l *limiter) keys() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += sh.lru.Len()
		sh.mu.Unlock()
	}
	return n
}
