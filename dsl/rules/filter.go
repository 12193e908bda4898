package rules

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/sluice-proxy/sluice/dsl/expr"
	"github.com/sluice-proxy/sluice/engine/attr"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// Compiler compiles *Config (the filter) and *RouteActions (per route).
// Register it under TypeURL.
type Compiler struct{}

var _ stream.Compiler = Compiler{}

// Compile implements stream.Compiler.
func (Compiler) Compile(cfg any) (stream.Factory, error) {
	c, ok := cfg.(*Config)
	if !ok || c == nil {
		return nil, fmt.Errorf("rules: config is %T, want *rules.Config", cfg)
	}
	out := &compiled{log: c.Logger}
	for _, b := range c.Request {
		cb, err := compileBlock(b, false)
		if err != nil {
			return nil, err
		}
		out.req = append(out.req, cb)
	}
	for _, b := range c.Response {
		cb, err := compileBlock(b, true)
		if err != nil {
			return nil, err
		}
		out.resp = append(out.resp, cb)
	}
	return out, nil
}

// CompilePerRoute implements stream.Compiler.
func (Compiler) CompilePerRoute(cfg any) (any, error) {
	c, ok := cfg.(*RouteActions)
	if !ok || c == nil {
		return nil, fmt.Errorf("rules: per-route config is %T, want *rules.RouteActions", cfg)
	}
	req, resp, err := compileActions(c.Actions, false)
	if err != nil {
		return nil, fmt.Errorf("rules: route %q: %w", c.Route, err)
	}
	return &compiledRoute{name: c.Route, req: req, resp: resp}, nil
}

// compiled is a compiled Config; it is the filter factory.
type compiled struct {
	req, resp []*compiledBlock
	log       *slog.Logger
}

type compiledBlock struct {
	b    *Block
	req  []step // request path
	resp []step // response path (for `on request`: kept for the response)
}

type compiledRoute struct {
	name      string
	req, resp []step
}

// step is a compiled action.
type step struct {
	a   Action
	lim *limiter // RateLimit only
}

func compileBlock(b *Block, response bool) (*compiledBlock, error) {
	if b == nil {
		return nil, errors.New("rules: nil block")
	}
	req, resp, err := compileActions(b.Actions, response)
	if err != nil {
		return nil, fmt.Errorf("rules: block at %s: %w", b.Where, err)
	}
	return &compiledBlock{b: b, req: req, resp: resp}, nil
}

// compileActions sorts actions into the request and response paths. In an
// `on response` block (response set) everything runs on the response path.
func compileActions(as []Action, response bool) (req, resp []step, err error) {
	for i, a := range as {
		s := step{a: a}
		onResponse := response
		switch a := a.(type) {
		case *Header:
			if !validName(a.Name) {
				return nil, nil, fmt.Errorf("action %d (%s): invalid header name %q", i, a.Where, a.Name)
			}
			if (a.Op == Remove) != (a.Value == nil) {
				return nil, nil, fmt.Errorf("action %d (%s): %s needs a value exactly when it is not remove", i, a.Where, a.Op)
			}
			if response && !a.Response {
				return nil, nil, fmt.Errorf("action %d (%s): request headers cannot change on the response path", i, a.Where)
			}
			onResponse = a.Response
		case *Rewrite:
			if a.Value == nil || response {
				return nil, nil, fmt.Errorf("action %d (%s): rewrite needs a value and runs on requests only", i, a.Where)
			}
		case *RateLimit:
			if a.Count <= 0 || a.Per <= 0 || response {
				return nil, nil, fmt.Errorf("action %d (%s): ratelimit needs a count and period > 0 and runs on requests only", i, a.Where)
			}
			s.lim = newLimiter(a.Count, a.Per, a.MaxKeys)
		case *Delay:
			if a.Duration < 0 {
				return nil, nil, fmt.Errorf("action %d (%s): negative delay", i, a.Where)
			}
		case *Abort:
			if a.Code < 200 || a.Code > 599 {
				return nil, nil, fmt.Errorf("action %d (%s): abort status %d out of range [200, 599]", i, a.Where, a.Code)
			}
		case *Respond:
			if a.Code < 200 || a.Code > 599 {
				return nil, nil, fmt.Errorf("action %d (%s): respond status %d out of range [200, 599]", i, a.Where, a.Code)
			}
		case *Redirect:
			if a.Location == nil {
				return nil, nil, fmt.Errorf("action %d (%s): redirect needs a location", i, a.Where)
			}
		case nil:
			return nil, nil, fmt.Errorf("action %d: nil", i)
		default:
			return nil, nil, fmt.Errorf("action %d: unknown action %T", i, a)
		}
		if onResponse {
			resp = append(resp, s)
		} else {
			req = append(req, s)
		}
	}
	return req, resp, nil
}

// NewFilter implements stream.Factory.
func (c *compiled) NewFilter(cb stream.Callbacks) stream.Filter {
	f := &filter{c: c, cb: cb}
	f.tr, _ = cb.(Tracer)
	return f
}

// filter is one stream's instance.
type filter struct {
	stream.PassThrough
	c  *compiled
	cb stream.Callbacks
	tr Tracer

	route    *compiledRoute   // the route's actions, fixed at request headers
	deferred []*compiledBlock // `on request` blocks that ran and have response actions
	replied  bool             // this filter sent a local reply (response actions already applied)
	rs       respSource
}

// reply is a local reply an action decided.
type reply struct {
	code    int
	body    string
	headers []header.Field
	details string
}

// failure is an evaluation error with where it happened.
type failure struct {
	where, text string
	err         error
}

// respSource is the stream as response actions see it: the response being
// filtered, whose :status is response.code (the engine may not have
// recorded the code yet when response filters run, and a local reply this
// filter is about to send has no stream state at all).
type respSource struct {
	stream.Callbacks
	h    *header.Map
	code int
}

func (s *respSource) ResponseHeaders() *header.Map { return s.h }
func (s *respSource) ResponseCode() int            { return s.code }

// OnRequestHeaders runs the `on request` blocks, then the route's actions.
func (f *filter) OnRequestHeaders(h *header.Map, _ bool) stream.Status {
	var src attr.Source = f.cb
	for _, b := range f.c.req {
		ok, err := EvalWhen(b.b.When, src)
		if err != nil {
			return f.fail(&failure{where: b.b.Where, text: b.b.Text, err: err})
		}
		if f.tr != nil {
			kind := BlockEntered
			if !ok {
				kind = BlockSkipped
			}
			f.tr.Trace(Event{Kind: kind, Where: b.b.Where, Text: b.b.Text})
		}
		if !ok {
			continue
		}
		if len(b.resp) > 0 {
			f.deferred = append(f.deferred, b)
		}
		if r, fl := f.run(b.req, h, src, false); fl != nil {
			return f.fail(fl)
		} else if r != nil {
			return f.sendReply(r)
		}
	}
	f.route, _ = f.cb.FilterOverride().(*compiledRoute)
	if f.route != nil {
		if r, fl := f.run(f.route.req, h, src, false); fl != nil {
			return f.fail(fl)
		} else if r != nil {
			return f.sendReply(r)
		}
	}
	return stream.Continue
}

// OnResponseHeaders runs the response actions on an upstream response (or
// a local reply of the proxy or another filter).
func (f *filter) OnResponseHeaders(h *header.Map, _ bool) stream.Status {
	if f.replied {
		return stream.Continue // our own reply: already done in sendReply
	}
	if f.route == nil {
		f.route, _ = f.cb.FilterOverride().(*compiledRoute)
	}
	f.rs = respSource{Callbacks: f.cb, h: h, code: statusOf(h)}
	r, fl := f.runResponse(h, &f.rs)
	if fl != nil {
		return f.fail(fl)
	}
	if r != nil {
		f.replied = true
		f.cb.SendLocalReply(r.code, r.body, r.headers, r.details)
		return stream.LocalReply
	}
	return stream.Continue
}

// runResponse runs the response path: the route's response actions, those
// kept from `on request` blocks, then the `on response` blocks.
func (f *filter) runResponse(h *header.Map, src attr.Source) (*reply, *failure) {
	if f.route != nil {
		if r, fl := f.run(f.route.resp, h, src, true); r != nil || fl != nil {
			return r, fl
		}
	}
	for _, b := range f.deferred {
		if r, fl := f.run(b.resp, h, src, true); r != nil || fl != nil {
			return r, fl
		}
	}
	for _, b := range f.c.resp {
		ok, err := EvalWhen(b.b.When, src)
		if err != nil {
			return nil, &failure{where: b.b.Where, text: b.b.Text, err: err}
		}
		if f.tr != nil {
			kind := BlockEntered
			if !ok {
				kind = BlockSkipped
			}
			f.tr.Trace(Event{Kind: kind, Where: b.b.Where, Text: b.b.Text, Response: true})
		}
		if !ok {
			continue
		}
		if r, fl := f.run(b.resp, h, src, true); r != nil || fl != nil {
			return r, fl
		}
	}
	return nil, nil
}

// sendReply sends a local reply decided on the request path, after the
// response actions had their say on it.
func (f *filter) sendReply(r *reply) stream.Status {
	f.replied = true
	var h header.Map
	h.Add(":status", strconv.Itoa(r.code))
	for _, fl := range r.headers {
		h.Add(fl.Name, fl.Value)
	}
	f.rs = respSource{Callbacks: f.cb, h: &h, code: r.code}
	r2, fl := f.runResponse(&h, &f.rs)
	if fl != nil {
		return f.fail(fl)
	}
	if r2 != nil {
		r = r2 // a response action replaced the reply; it is not filtered again
	} else {
		r.headers = r.headers[:0]
		for _, fl := range h.Fields() {
			if fl.Name != ":status" {
				r.headers = append(r.headers, fl)
			}
		}
	}
	f.cb.SendLocalReply(r.code, r.body, r.headers, r.details)
	return stream.LocalReply
}

// fail answers 500 for an evaluation error and logs it.
func (f *filter) fail(fl *failure) stream.Status {
	f.replied = true
	details := "sluice_rules_error"
	if errors.Is(fl.err, expr.ErrCostLimit) {
		details = "sluice_rules_cost_limit"
	}
	if f.tr != nil {
		f.tr.Trace(Event{Kind: Failed, Where: fl.where, Text: fl.text, Note: fl.err.Error()})
	} else {
		log := f.c.log
		if log == nil {
			log = slog.Default()
		}
		log.Error("sluice rules: request failed", "at", fl.where, "rule", fl.text, "err", fl.err,
			"stream", f.cb.StreamID(), "path", f.cb.RequestHeaders().Value(":path"))
	}
	f.cb.SendLocalReply(500, "rule evaluation failed\n", nil, details)
	return stream.LocalReply
}

func (f *filter) trace(s *step, response bool, kind EventKind, note string) {
	f.tr.Trace(Event{Kind: kind, Where: s.a.Pos(), Text: s.a.String(), Note: note, Response: response})
}

func (f *filter) roll(p float64) bool {
	if f.tr != nil {
		return f.tr.Roll(p)
	}
	return p >= 100 || p > 0 && rand.Float64()*100 < p
}

// run runs steps on h (the request or response headers). It returns the
// local reply an action decided, or the failure that stopped it.
func (f *filter) run(steps []step, h *header.Map, src attr.Source, response bool) (*reply, *failure) {
	for i := range steps {
		s := &steps[i]
		fail := func(err error) (*reply, *failure) {
			return nil, &failure{where: s.a.Pos(), text: s.a.String(), err: err}
		}
		note := ""
		switch a := s.a.(type) {
		case *Header:
			if a.Op == Remove {
				h.Del(a.Name)
				break
			}
			v, err := a.Value.EvalString(src)
			if err != nil {
				return fail(err)
			}
			if !ValidHeaderValue(v) {
				return fail(fmt.Errorf("header %s: value %q has a line break or NUL", a.Name, v))
			}
			if a.Op == Set {
				h.Set(a.Name, v)
			} else {
				h.Add(a.Name, v)
			}
			if f.tr != nil {
				note = strconv.Quote(v)
			}
		case *Rewrite:
			v, err := a.Value.EvalString(src)
			if err != nil {
				return fail(err)
			}
			if !ValidHeaderValue(v) || v == "" {
				return fail(fmt.Errorf("rewrite: invalid value %q", v))
			}
			if a.Host {
				h.Set(":authority", v)
			} else {
				if v[0] != '/' {
					return fail(fmt.Errorf("rewrite path: %q does not start with /", v))
				}
				h.Set(":path", v)
			}
			if f.tr != nil {
				note = strconv.Quote(v)
			}
		case *RateLimit:
			key := ""
			if a.By != nil {
				k, err := a.By.EvalString(src)
				if err != nil && !isMissingKey(err) {
					return fail(err)
				}
				key = k
			}
			ok, wait := s.lim.take(key)
			if !ok {
				secs := strconv.FormatInt(int64(max(1, (wait+time.Second-1)/time.Second)), 10)
				r := &reply{code: 429, body: "rate limited\n", details: "sluice_rate_limited", headers: []header.Field{
					{Name: "x-ratelimit-limit", Value: strconv.Itoa(a.Count) + ";w=" + strconv.FormatFloat(a.Per.Seconds(), 'f', -1, 64)},
					{Name: "x-ratelimit-remaining", Value: "0"},
					{Name: "x-ratelimit-reset", Value: secs},
					{Name: "retry-after", Value: secs},
				}}
				if f.tr != nil {
					f.trace(s, response, ActionRan, fmt.Sprintf("bucket %q empty: 429", key))
				}
				return r, nil
			}
			if f.tr != nil {
				note = fmt.Sprintf("bucket %q: allowed", key)
			}
		case *Delay:
			if !f.roll(a.Percent) {
				if f.tr != nil {
					f.trace(s, response, ActionSkipped, "")
				}
				continue
			}
			if f.tr != nil {
				note = "waits " + a.Duration.String()
			} else {
				sleep(f.cb.Context(), a.Duration)
			}
		case *Abort:
			if !f.roll(a.Percent) {
				if f.tr != nil {
					f.trace(s, response, ActionSkipped, "")
				}
				continue
			}
			if f.tr != nil {
				f.trace(s, response, ActionRan, "")
			}
			return &reply{code: a.Code, body: "fault filter abort\n", details: "sluice_fault_abort"}, nil
		case *Respond:
			body := a.Literal
			if a.Body != nil {
				v, err := a.Body.EvalString(src)
				if err != nil {
					return fail(err)
				}
				body = v
			}
			if f.tr != nil {
				f.trace(s, response, ActionRan, "")
			}
			return &reply{code: a.Code, body: body, details: "sluice_respond"}, nil
		case *Redirect:
			loc, err := a.Location.EvalString(src)
			if err != nil {
				return fail(err)
			}
			if !ValidHeaderValue(loc) || loc == "" {
				return fail(fmt.Errorf("redirect: invalid location %q", loc))
			}
			if f.tr != nil {
				f.trace(s, response, ActionRan, "location "+strconv.Quote(loc))
			}
			return &reply{code: a.Code, headers: []header.Field{{Name: "location", Value: loc}}, details: "sluice_redirect"}, nil
		}
		if f.tr != nil {
			f.trace(s, response, ActionRan, note)
		}
	}
	return nil, nil
}

func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// statusOf reads :status.
func statusOf(h *header.Map) int {
	n, _ := strconv.Atoi(h.Value(":status"))
	return n
}
