package server

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/header"
	"github.com/sluice-proxy/sluice/engine/stream"
)

// --- snapshot builders ------------------------------------------------------

func cluster(name string) *config.Cluster {
	return &config.Cluster{Name: name, Type: "STATIC", Endpoints: []*config.Endpoint{{Address: "127.0.0.1:9", Healthy: true}}}
}

func routeTo(cluster string) *config.RouteConfiguration {
	return &config.RouteConfiguration{Name: "inline", VirtualHosts: []*config.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []*config.Route{{Name: "r", Match: config.RouteMatch{Prefix: "/"}, Action: &config.RouteAction{Cluster: cluster}}},
	}}}
}

func listener(name, addr string, rc *config.RouteConfiguration, filters ...*config.HTTPFilter) *config.Listener {
	return &config.Listener{Name: name, Address: addr, FilterChains: []*config.FilterChain{{
		HTTP: &config.HTTPConnectionManager{StatPrefix: name, RouteConfig: rc, HTTPFilters: filters},
	}}}
}

func rdsListener(name, addr, rds string) *config.Listener {
	return &config.Listener{Name: name, Address: addr, FilterChains: []*config.FilterChain{{
		HTTP: &config.HTTPConnectionManager{StatPrefix: name, RDSName: rds},
	}}}
}

func baseSnap() *config.Snapshot {
	return &config.Snapshot{
		Clusters:     []*config.Cluster{cluster("a"), cluster("b")},
		RouteConfigs: []*config.RouteConfiguration{{Name: "rds1"}},
		Listeners:    []*config.Listener{listener("l1", "127.0.0.1:8080", routeTo("a"))},
		Admin:        &config.Admin{Address: "127.0.0.1:9901"},
	}
}

// --- Validate ----------------------------------------------------------------

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(s *config.Snapshot)
		nilSnap bool
		wantErr []string // substrings; nil means valid
	}{
		{name: "nil snapshot", nilSnap: true, wantErr: []string{"empty snapshot"}},
		{name: "valid", mod: func(*config.Snapshot) {}},
		{name: "empty snapshot is valid", mod: func(s *config.Snapshot) { *s = config.Snapshot{} }},
		{name: "unnamed cluster", mod: func(s *config.Snapshot) { s.Clusters = append(s.Clusters, &config.Cluster{}) },
			wantErr: []string{"cluster 2 has no name"}},
		{name: "duplicate cluster", mod: func(s *config.Snapshot) { s.Clusters = append(s.Clusters, cluster("a")) },
			wantErr: []string{`duplicate cluster "a"`}},
		{name: "duplicate route configuration", mod: func(s *config.Snapshot) {
			s.RouteConfigs = append(s.RouteConfigs, &config.RouteConfiguration{Name: "rds1"})
		}, wantErr: []string{`duplicate route configuration "rds1"`}},
		{name: "unknown cluster in named route configuration", mod: func(s *config.Snapshot) {
			rc := routeTo("nope")
			rc.Name = "rds2"
			s.RouteConfigs = append(s.RouteConfigs, rc)
		}, wantErr: []string{`route configuration "rds2"`, `virtual host "vh"`, "route r", `unknown cluster "nope"`}},
		{name: "unknown cluster in inline route", mod: func(s *config.Snapshot) {
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", routeTo("nope"))
		}, wantErr: []string{`listener "l1"`, "filter chain 0", `unknown cluster "nope"`}},
		{name: "clusters from CDS: a route may name one not yet known", mod: func(s *config.Snapshot) {
			s.DynamicClusters = true
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", routeTo("not-yet"))
			rc := routeTo("not-yet-either")
			rc.Name = "rds2"
			s.RouteConfigs = append(s.RouteConfigs, rc)
		}},
		{name: "unnamed route is numbered", mod: func(s *config.Snapshot) {
			rc := routeTo("nope")
			rc.VirtualHosts[0].Routes = append([]*config.Route{{Match: config.RouteMatch{Prefix: "/x"}, DirectResponse: &config.DirectResponse{Status: 200}}},
				&config.Route{Match: config.RouteMatch{Prefix: "/"}, Action: &config.RouteAction{Cluster: "nope"}})
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", rc)
		}, wantErr: []string{"route #1", `unknown cluster "nope"`}},
		{name: "unknown weighted cluster", mod: func(s *config.Snapshot) {
			rc := routeTo("")
			rc.VirtualHosts[0].Routes[0].Action.WeightedClusters = []*config.WeightedCluster{{Name: "a", Weight: 1}, {Name: "w", Weight: 1}}
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", rc)
		}, wantErr: []string{`unknown cluster "w"`}},
		{name: "known weighted clusters", mod: func(s *config.Snapshot) {
			rc := routeTo("")
			rc.VirtualHosts[0].Routes[0].Action.WeightedClusters = []*config.WeightedCluster{{Name: "a", Weight: 1}, {Name: "b", Weight: 1}}
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", rc)
		}},
		{name: "unknown mirror cluster", mod: func(s *config.Snapshot) {
			rc := routeTo("a")
			rc.VirtualHosts[0].Routes[0].Action.MirrorPolicy = []config.MirrorPolicy{{Cluster: "shadow", Percent: 10}}
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", rc)
		}, wantErr: []string{`unknown mirror cluster "shadow"`}},
		{name: "cluster header needs no known cluster", mod: func(s *config.Snapshot) {
			rc := routeTo("")
			rc.VirtualHosts[0].Routes[0].Action.ClusterHeader = "x-cluster"
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", rc)
		}},
		{name: "direct response route needs no cluster", mod: func(s *config.Snapshot) {
			rc := routeTo("")
			rc.VirtualHosts[0].Routes[0].Action = nil
			rc.VirtualHosts[0].Routes[0].DirectResponse = &config.DirectResponse{Status: 200}
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", rc)
		}},
		{name: "known RDS name", mod: func(s *config.Snapshot) {
			s.Listeners = append(s.Listeners, rdsListener("l2", "127.0.0.1:8081", "rds1"))
		}},
		{name: "unknown RDS name", mod: func(s *config.Snapshot) {
			s.Listeners = append(s.Listeners, rdsListener("l2", "127.0.0.1:8081", "rds9"))
		}, wantErr: []string{`listener "l2"`, `route configuration "rds9" not found`}},
		{name: "unknown RDS name in default chain", mod: func(s *config.Snapshot) {
			s.Listeners[0].DefaultFilterChain = &config.FilterChain{HTTP: &config.HTTPConnectionManager{RDSName: "rds9"}}
		}, wantErr: []string{"filter chain 1", `route configuration "rds9" not found`}},
		{name: "unnamed listener", mod: func(s *config.Snapshot) {
			s.Listeners = append(s.Listeners, listener("", "127.0.0.1:8081", routeTo("a")))
		}, wantErr: []string{"listener 1 has no name"}},
		{name: "duplicate listener name", mod: func(s *config.Snapshot) {
			s.Listeners = append(s.Listeners, listener("l1", "127.0.0.1:8081", routeTo("a")))
		}, wantErr: []string{`duplicate listener "l1"`}},
		{name: "duplicate listener address", mod: func(s *config.Snapshot) {
			s.Listeners = append(s.Listeners, listener("l2", "127.0.0.1:8080", routeTo("a")))
		}, wantErr: []string{`listeners "l1" and "l2" both use address 127.0.0.1:8080`}},
		{name: "port 0 duplicates allowed", mod: func(s *config.Snapshot) {
			s.Listeners = []*config.Listener{
				listener("l1", "127.0.0.1:0", routeTo("a")),
				listener("l2", "127.0.0.1:0", routeTo("a")),
				listener("l3", "127.0.0.1:0", routeTo("a")),
			}
		}},
		{name: "same port other ip allowed", mod: func(s *config.Snapshot) {
			s.Listeners = append(s.Listeners, listener("l2", "127.0.0.2:8080", routeTo("a")))
		}},
		{name: "ipv6 address", mod: func(s *config.Snapshot) {
			s.Listeners = append(s.Listeners, listener("l2", "[::1]:8080", routeTo("a")))
		}},
		{name: "empty host (all interfaces)", mod: func(s *config.Snapshot) {
			s.Listeners = append(s.Listeners, listener("l2", ":8081", routeTo("a")))
		}},
		{name: "localhost allowed", mod: func(s *config.Snapshot) {
			s.Listeners = append(s.Listeners, listener("l2", "localhost:8081", routeTo("a")))
		}},
		{name: "missing port", mod: func(s *config.Snapshot) { s.Listeners[0].Address = "127.0.0.1" },
			wantErr: []string{`listener "l1"`, `bad address "127.0.0.1"`}},
		{name: "empty address", mod: func(s *config.Snapshot) { s.Listeners[0].Address = "" },
			wantErr: []string{`listener "l1"`, "bad address"}},
		{name: "port out of range", mod: func(s *config.Snapshot) { s.Listeners[0].Address = "127.0.0.1:65536" },
			wantErr: []string{`bad port in address "127.0.0.1:65536"`}},
		{name: "named port", mod: func(s *config.Snapshot) { s.Listeners[0].Address = "127.0.0.1:http" },
			wantErr: []string{"bad port"}},
		{name: "negative port", mod: func(s *config.Snapshot) { s.Listeners[0].Address = "127.0.0.1:-1" },
			wantErr: []string{"bad port"}},
		{name: "host name", mod: func(s *config.Snapshot) { s.Listeners[0].Address = "example.com:80" },
			wantErr: []string{`listener "l1"`, "listeners bind IP addresses, not host names"}},
		{name: "bad ip", mod: func(s *config.Snapshot) { s.Listeners[0].Address = "300.1.1.1:80" },
			wantErr: []string{"not host names"}},
		{name: "listener without filter chain", mod: func(s *config.Snapshot) { s.Listeners[0].FilterChains = nil },
			wantErr: []string{`listener "l1" has no filter chain`}},
		{name: "listener with only a default chain", mod: func(s *config.Snapshot) {
			s.Listeners[0].DefaultFilterChain = s.Listeners[0].FilterChains[0]
			s.Listeners[0].FilterChains = nil
		}},
		{name: "bad admin address", mod: func(s *config.Snapshot) { s.Admin.Address = "nope" },
			wantErr: []string{"admin", `bad address "nope"`}},
		{name: "admin host name", mod: func(s *config.Snapshot) { s.Admin.Address = "admin.example.com:9901" },
			wantErr: []string{"admin", "not host names"}},
		{name: "admin empty address allowed", mod: func(s *config.Snapshot) { s.Admin.Address = "" }},
		{name: "admin nil allowed", mod: func(s *config.Snapshot) { s.Admin = nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var snap *config.Snapshot
			if !tt.nilSnap {
				snap = baseSnap()
				tt.mod(snap)
			}
			err := Validate(snap)
			if tt.wantErr == nil {
				if err != nil {
					t.Errorf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("valid; want error containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// Validate runs first on every snapshot (Apply and 'sluice validate'); a
// nil entry in one of its lists must be an error, as upstream.Manager.Build
// ("cluster %d: nil") and route.Compile ("virtual host %d is nil") already
// treat it, not a panic that takes the process down.
func TestValidateNilEntries(t *testing.T) {
	tests := []struct {
		name string
		mod  func(s *config.Snapshot)
	}{
		{"nil cluster", func(s *config.Snapshot) { s.Clusters = append(s.Clusters, nil) }},
		{"nil route configuration", func(s *config.Snapshot) { s.RouteConfigs = append(s.RouteConfigs, nil) }},
		{"nil listener", func(s *config.Snapshot) { s.Listeners = append(s.Listeners, nil) }},
		{"nil filter chain", func(s *config.Snapshot) { s.Listeners[0].FilterChains = append(s.Listeners[0].FilterChains, nil) }},
		{"nil virtual host", func(s *config.Snapshot) {
			rc := routeTo("a")
			rc.VirtualHosts = append(rc.VirtualHosts, nil)
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", rc)
		}},
		{"nil route", func(s *config.Snapshot) {
			rc := routeTo("a")
			rc.VirtualHosts[0].Routes = append(rc.VirtualHosts[0].Routes, nil)
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", rc)
		}},
		{"nil weighted cluster", func(s *config.Snapshot) {
			rc := routeTo("")
			rc.VirtualHosts[0].Routes[0].Action.WeightedClusters = []*config.WeightedCluster{nil}
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", rc)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := baseSnap()
			tt.mod(snap)
			var err error
			func() {
				defer func() {
					if r := recover(); r != nil {
						t.Errorf("Validate panicked: %v", r)
					}
				}()
				err = Validate(snap)
			}()
			if err == nil && !t.Failed() {
				t.Error("Validate accepted a snapshot with a nil entry")
			}
		})
	}
}

// --- Check -------------------------------------------------------------------

type fakeServerCodec struct{}

func (fakeServerCodec) ServeConn(context.Context, net.Conn, *stream.ConnInfo, stream.Handler, *stream.ServerOptions) error {
	return nil
}

type fakeClientCodec struct{}

func (fakeClientCodec) NewClientConn(net.Conn) stream.ClientConn { return nil }

type okFilter struct{}

func (okFilter) Compile(any) (stream.Factory, error) {
	return stream.FactoryFunc(func(stream.Callbacks) stream.Filter { return stream.PassThrough{} }), nil
}
func (okFilter) CompilePerRoute(cfg any) (any, error) { return cfg, nil }

var errRejected = errors.New("lua: line 3: unexpected symbol near 'end'")

type failingFilter struct{}

func (failingFilter) Compile(any) (stream.Factory, error) { return nil, errRejected }
func (failingFilter) CompilePerRoute(any) (any, error)    { return nil, errRejected }

func testRegistry() *stream.Registry {
	r := stream.NewRegistry()
	r.RegisterCodec("http1", fakeServerCodec{}, fakeClientCodec{})
	r.RegisterFilter(okFilter{}, "test.ok")
	r.RegisterFilter(failingFilter{}, "test.fail")
	return r
}

func TestCheck(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(s *config.Snapshot)
		wantErr []string
		cause   string // the resource the error is pinned on (config.ResourceError): "kind name"
	}{
		{name: "valid", mod: func(*config.Snapshot) {}},
		{name: "known filter", mod: func(s *config.Snapshot) {
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", routeTo("a"), &config.HTTPFilter{Name: "f", TypeURL: "test.ok"})
		}},
		{name: "unknown filter type", mod: func(s *config.Snapshot) {
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", routeTo("a"),
				&config.HTTPFilter{Name: "f", TypeURL: "test.ok"},
				&config.HTTPFilter{Name: "authz", TypeURL: "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"})
		}, wantErr: []string{`listener "l1"`, "filter chain 0", "http filter 1 (authz)", `unknown filter type "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"`}, cause: "listener l1"},
		{name: "optional unknown filter accepted", mod: func(s *config.Snapshot) {
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", routeTo("a"),
				&config.HTTPFilter{Name: "maybe", TypeURL: "type.example/Unknown", Optional: true},
				&config.HTTPFilter{Name: "f", TypeURL: "test.ok"})
		}},
		{name: "filter compile error propagated", mod: func(s *config.Snapshot) {
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", routeTo("a"),
				&config.HTTPFilter{Name: "f", TypeURL: "test.ok"},
				&config.HTTPFilter{Name: "script", TypeURL: "test.fail"})
		}, wantErr: []string{`listener "l1"`, "http filter 1 (script)", errRejected.Error()}},
		{name: "default chain error named", mod: func(s *config.Snapshot) {
			s.Listeners[0].DefaultFilterChain = &config.FilterChain{HTTP: &config.HTTPConnectionManager{
				RouteConfig: routeTo("a"), HTTPFilters: []*config.HTTPFilter{{Name: "d", TypeURL: "test.fail"}}}}
		}, wantErr: []string{"default filter chain", "http filter 0 (d)", errRejected.Error()}, cause: "listener l1"},
		{name: "chain without network filter", mod: func(s *config.Snapshot) {
			s.Listeners[0].FilterChains = append(s.Listeners[0].FilterChains, &config.FilterChain{Name: "tcp"})
		}, wantErr: []string{"filter chain 1", "no network filter"}},
		{name: "validation runs first", mod: func(s *config.Snapshot) { s.Clusters = append(s.Clusters, cluster("a")) },
			wantErr: []string{`duplicate cluster "a"`}},
		{name: "cluster error", mod: func(s *config.Snapshot) { s.Clusters[1].LBPolicy = "fastest" },
			wantErr: []string{`cluster "b"`, `unknown lb_policy "fastest"`}, cause: "cluster b"},
		{name: "cluster protocol without codec", mod: func(s *config.Snapshot) { s.Clusters[1].Protocol = "http2" },
			wantErr: []string{`cluster "b"`, `no multiplexing client codec "http2"`}},
		{name: "listener codec without server codec", mod: func(s *config.Snapshot) {
			s.Listeners[0].FilterChains[0].HTTP.Codec = config.CodecHTTP2
		}, wantErr: []string{`listener "l1"`, `codec "http2"`}},
		{name: "route table error", mod: func(s *config.Snapshot) {
			s.RouteConfigs = append(s.RouteConfigs, &config.RouteConfiguration{Name: "bad", VirtualHosts: []*config.VirtualHost{{Name: "v"}}})
		}, wantErr: []string{`route configuration "bad"`, "no domains"}, cause: "route_config bad"},
		{name: "per-route config compiled", mod: func(s *config.Snapshot) {
			rc := routeTo("a")
			rc.VirtualHosts[0].Routes[0].TypedPerFilterConfig = map[string]*config.FilterOverride{"f": {Config: "x"}}
			s.Listeners[0] = listener("l1", "127.0.0.1:8080", rc, &config.HTTPFilter{Name: "f", TypeURL: "test.ok"})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap := baseSnap()
			tt.mod(snap)
			err := Check(snap, testRegistry())
			if tt.wantErr == nil {
				if err != nil {
					t.Errorf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted; want error containing %q", tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tt.cause != "" {
				var re *config.ResourceError
				if !errors.As(err, &re) || re.Kind+" "+re.Name != tt.cause {
					t.Errorf("error %q is not pinned on %s (%+v)", err, tt.cause, re)
				}
			}
		})
	}
}

// Check binds nothing and opens no files: a listener address already in
// use and an access log in a directory that does not exist pass.
func TestCheckHasNoSideEffects(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	logPath := filepath.Join(t.TempDir(), "missing-dir", "access.log")

	snap := baseSnap()
	snap.Listeners[0].Address = busy.Addr().String()
	snap.Listeners[0].FilterChains[0].HTTP.AccessLogs = []*config.AccessLog{{Path: logPath}}
	snap.Admin.Address = busy.Addr().String()
	if err := Check(snap, testRegistry()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(logPath), "*")); len(m) != 0 {
		t.Errorf("Check created files: %v", m)
	}
	// A bad access log format is still reported.
	snap.Listeners[0].FilterChains[0].HTTP.AccessLogs[0].Format = "%NOT_A_COMMAND%"
	if err := Check(snap, testRegistry()); err == nil || !strings.Contains(err.Error(), "access log") {
		t.Errorf("Check with a bad access log format: %v", err)
	}
}

// connHandler refuses a stream whose listener went away with a 503.
func TestConnHandlerRefusesWithoutGraph(t *testing.T) {
	s := New(Options{Registry: testRegistry()})
	s.current.Store(&graph{listeners: map[string]*listenerGraph{}})
	h := &connHandler{s: s, listener: "gone", info: &stream.ConnInfo{}}
	ss := &recordingStream{}
	h.ServeStream(ss)
	if ss.heads != 1 || ss.h.Value(":status") != "503" || ss.h.Value("connection") != "close" || !ss.end {
		t.Errorf("wrote %d heads: %v (end %v)", ss.heads, ss.h.Fields(), ss.end)
	}
}

type recordingStream struct {
	stream.ServerStream
	heads int
	h     header.Map
	end   bool
}

func (r *recordingStream) WriteHeaders(h *header.Map, end bool) error {
	r.heads++
	r.h.CopyFrom(h)
	r.end = end
	return nil
}
