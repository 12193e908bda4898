// Package admin is Sluice's admin HTTP server, with Envoy's admin paths
// (/ready, /stats, /stats/prometheus, /config_dump, /clusters, /listeners,
// /drain_listeners, /server_info, /quitquitquit, /healthcheck/fail|ok).
// It is not on the data path, so it uses net/http. It depends only on the
// standard library and engine/observe: everything else arrives through Deps.
//
// Endpoints that change the server's state accept only POST (405 otherwise,
// like Envoy) and reject cross-origin browser requests, so a web page cannot
// drain or stop the proxy through a browser on the same host. The server
// binds loopback unless given an explicit host.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluice-proxy/sluice/engine/observe"
)

// Server states, as Envoy names them in /ready and /server_info.
const (
	StateLive            = "LIVE"
	StateDraining        = "DRAINING"
	StatePreInitializing = "PRE_INITIALIZING"
	StateInitializing    = "INITIALIZING"
)

// DefaultAddr is where the admin server listens when given no address.
const DefaultAddr = "127.0.0.1:9901"

// ListenerInfo describes one listener for /listeners.
type ListenerInfo struct {
	Name    string
	Address string // bound address, "host:port" (or a pipe path)
}

// Deps is what the admin server reads and drives. Any field may be nil: the
// matching endpoint then answers 501 Not Implemented (State nil means LIVE;
// ServerInfo nil serves a built-in summary).
type Deps struct {
	// Stats is the process's metric store (/stats, /stats/prometheus).
	Stats *observe.Store
	// ConfigDump returns the value /config_dump renders as JSON.
	ConfigDump func() any
	// Clusters writes /clusters; format is "json" (?format=json) or "text"
	// (Envoy's cluster::host::stat::value lines).
	Clusters func(w io.Writer, format string)
	// Listeners lists the active listeners (/listeners).
	Listeners func() []ListenerInfo
	// Drain starts draining listeners (POST /drain_listeners?inboundonly&graceful).
	Drain func(inboundOnly, graceful bool)
	// Quit shuts the process down (POST /quitquitquit). It runs on its own
	// goroutine after the response is sent, so it may Close this server.
	Quit func()
	// State returns StateLive, StateDraining or StatePreInitializing.
	State func() string
	// ServerInfo returns the value /server_info renders as JSON (version,
	// state, uptime, command line). Use (*Server).State for the state so it
	// reflects /healthcheck/fail.
	ServerInfo func() any
}

// Timeouts of the admin HTTP server.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 2 * time.Minute // large /stats or /config_dump
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
	shutdownTimeout   = 5 * time.Second
)

// Content types.
const (
	ctText       = "text/plain; charset=UTF-8"
	ctHTML       = "text/html; charset=UTF-8"
	ctJSON       = "application/json"
	ctPrometheus = "text/plain; version=0.0.4; charset=UTF-8"
)

// Server is the admin HTTP server.
type Server struct {
	addr    string
	deps    Deps
	log     *slog.Logger
	started time.Time

	hcFailed atomic.Bool
	csrf     *http.CrossOriginProtection

	endpoints []*endpoint
	byPath    map[string]*endpoint

	mu     sync.Mutex
	srv    *http.Server
	ln     net.Listener
	done   chan struct{}
	closed bool
}

type endpoint struct {
	path    string
	help    string
	mutates bool // POST only
	handle  func(w http.ResponseWriter, r *http.Request)
}

// New returns a server for addr (DefaultAddr when empty; a missing host
// means 127.0.0.1). log may be nil for slog.Default. Call Start to listen.
func New(addr string, deps Deps, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{addr: addr, deps: deps, log: log, started: time.Now(), csrf: http.NewCrossOriginProtection()}
	s.endpoints = []*endpoint{
		{"/", "Admin home page", false, s.handleIndex},
		{"/help", "Print out list of admin commands", false, s.handleHelp},
		{"/ready", "Print server state, return 200 if LIVE, otherwise return 503", false, s.handleReady},
		{"/stats", "Print server stats (?filter=REGEX, ?usedonly, ?format=json|prometheus)", false, s.handleStats},
		{"/stats/prometheus", "Print server stats in prometheus format", false, s.handlePrometheus},
		{"/config_dump", "Dump current Sluice configs as JSON", false, s.handleConfigDump},
		{"/clusters", "Upstream cluster status (?format=json)", false, s.handleClusters},
		{"/listeners", "Print listener info (?format=json)", false, s.handleListeners},
		{"/server_info", "Print server version/status information", false, s.handleServerInfo},
		{"/drain_listeners", "Drain listeners (?inboundonly, ?graceful)", true, s.handleDrain},
		{"/healthcheck/fail", "Cause the server to fail health checks", true, s.handleHealthcheck(true)},
		{"/healthcheck/ok", "Cause the server to pass health checks", true, s.handleHealthcheck(false)},
		{"/quitquitquit", "Exit the server", true, s.handleQuit},
	}
	s.byPath = make(map[string]*endpoint, len(s.endpoints))
	for _, e := range s.endpoints {
		s.byPath[e.path] = e
	}
	return s
}

// bindAddr applies the defaults: DefaultAddr for "", loopback for ":port".
// It reports whether the host was defaulted and whether the result is not
// a loopback address.
func bindAddr(addr string) (bound string, defaulted, public bool, err error) {
	if addr == "" {
		return DefaultAddr, true, false, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", false, false, fmt.Errorf("admin: bad address %q: %w", addr, err)
	}
	if host == "" {
		return net.JoinHostPort("127.0.0.1", port), true, false, nil
	}
	if host == "localhost" {
		return addr, false, false, nil
	}
	a, perr := netip.ParseAddr(host)
	return addr, false, perr != nil || !a.IsLoopback(), nil
}

// Start listens and serves in the background. The bound address is then
// available from Addr.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil || s.closed {
		return errors.New("admin: server already started")
	}
	addr, defaulted, public, err := bindAddr(s.addr)
	if err != nil {
		return err
	}
	if defaulted {
		s.log.Info("admin: no host in address, binding loopback", "requested", s.addr, "address", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	if public {
		s.log.Warn("admin: listening on a non-loopback address; anyone who can reach it can drain and stop the server", "address", ln.Addr().String())
	}
	s.ln = ln
	s.done = make(chan struct{})
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	srv, done := s.srv, s.done
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin: serve failed", "error", err)
		}
	}()
	s.log.Info("admin: listening", "address", ln.Addr().String())
	return nil
}

// Addr returns the bound address, or "" before Start.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Close stops the server: it stops accepting, lets in-flight requests finish
// for a few seconds, then closes what remains. It is idempotent.
func (s *Server) Close() {
	s.mu.Lock()
	srv, done := s.srv, s.done
	already := s.closed
	s.closed = true
	s.mu.Unlock()
	if already || srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
	}
	<-done
}

// State returns the server state: the one Deps.State reports, except that
// a LIVE server whose health checks were failed by /healthcheck/fail is
// DRAINING, as in Envoy.
func (s *Server) State() string {
	st := StateLive
	if s.deps.State != nil {
		st = s.deps.State()
	}
	if st == StateLive && s.hcFailed.Load() {
		return StateDraining
	}
	return st
}

// HealthCheckFailed reports whether /healthcheck/fail is in effect, for the
// health check filter.
func (s *Server) HealthCheckFailed() bool { return s.hcFailed.Load() }

// ServeHTTP dispatches admin requests.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-cache, max-age=0")
	h.Set("X-Content-Type-Options", "nosniff")
	e := s.byPath[r.URL.Path]
	if e == nil {
		var b bytes.Buffer
		b.WriteString("invalid path. ")
		s.writeHelp(&b)
		writeText(w, http.StatusNotFound, b.String())
		return
	}
	if e.mutates {
		if r.Method != http.MethodPost {
			h.Set("Allow", http.MethodPost)
			writeText(w, http.StatusMethodNotAllowed, "This endpoint requires POST.\n")
			return
		}
		if err := s.csrf.Check(r); err != nil {
			writeText(w, http.StatusForbidden, "cross-origin request refused\n")
			return
		}
		s.log.Info("admin: request", "method", r.Method, "path", r.URL.RequestURI(), "remote", r.RemoteAddr)
	} else if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		writeText(w, http.StatusMethodNotAllowed, "This endpoint requires GET.\n")
		return
	}
	e.handle(w, r)
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", ctText)
	w.WriteHeader(code)
	io.WriteString(w, body)
}

func notImplemented(w http.ResponseWriter, r *http.Request) {
	writeText(w, http.StatusNotImplemented, r.URL.Path+": not available in this server\n")
}

// writeJSON renders v fully before answering, so an encoding error is a
// clean 500 instead of a truncated 200.
func (s *Server) writeJSON(w http.ResponseWriter, r *http.Request, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		s.log.Error("admin: JSON encoding failed", "path", r.URL.Path, "error", err)
		writeText(w, http.StatusInternalServerError, "JSON encoding failed: "+err.Error()+"\n")
		return
	}
	w.Header().Set("Content-Type", ctJSON)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(http.StatusOK)
	w.Write(append(b, '\n'))
}

// format returns ?format, checked against the allowed values ("" first).
func format(w http.ResponseWriter, r *http.Request, allowed ...string) (string, bool) {
	f := r.URL.Query().Get("format")
	for _, a := range allowed {
		if f == a {
			return f, true
		}
	}
	writeText(w, http.StatusBadRequest, fmt.Sprintf("unsupported format %q; use one of: %s\n", f, strings.Join(allowed[1:], ", ")))
	return "", false
}

func (s *Server) writeHelp(w io.Writer) {
	io.WriteString(w, "admin commands are:\n")
	for _, e := range s.endpoints {
		fmt.Fprintf(w, "  %s: %s\n", e.path, e.help)
	}
}

func (s *Server) handleHelp(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	s.writeHelp(&b)
	writeText(w, http.StatusOK, b.String())
}

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	var b bytes.Buffer
	b.WriteString("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Sluice admin</title></head><body>\n")
	b.WriteString("<h1>Sluice admin</h1>\n<table>\n")
	for _, e := range s.endpoints {
		if e.path == "/" {
			continue
		}
		p, help := html.EscapeString(e.path), html.EscapeString(e.help)
		if e.mutates {
			fmt.Fprintf(&b, "<tr><td><form action=\"%s\" method=\"post\"><button type=\"submit\">%s</button></form></td><td>%s (POST)</td></tr>\n", p, p, help)
		} else {
			fmt.Fprintf(&b, "<tr><td><a href=\"%s\">%s</a></td><td>%s</td></tr>\n", p, p, help)
		}
	}
	b.WriteString("</table>\n</body></html>\n")
	w.Header().Set("Content-Type", ctHTML)
	w.WriteHeader(http.StatusOK)
	w.Write(b.Bytes())
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request) {
	st := s.State()
	code := http.StatusOK
	if st != StateLive {
		code = http.StatusServiceUnavailable
	}
	writeText(w, code, st+"\n")
}

func (s *Server) handleStats(w http.ResponseWriter, r *http.Request) {
	if s.deps.Stats == nil {
		notImplemented(w, r)
		return
	}
	f, ok := format(w, r, "", "text", "json", "prometheus")
	if !ok {
		return
	}
	if f == "prometheus" {
		s.handlePrometheus(w, r)
		return
	}
	q := r.URL.Query()
	var filter *regexp.Regexp
	if expr := q.Get("filter"); expr != "" {
		re, err := regexp.Compile(expr)
		if err != nil {
			writeText(w, http.StatusBadRequest, "Invalid regex: "+err.Error()+"\n")
			return
		}
		filter = re
	}
	usedOnly := q.Has("usedonly")
	var err error
	if f == "json" {
		w.Header().Set("Content-Type", ctJSON)
		err = observe.WriteJSON(w, s.deps.Stats, filter, usedOnly)
	} else {
		w.Header().Set("Content-Type", ctText)
		err = observe.WriteText(w, s.deps.Stats, filter, usedOnly)
	}
	if err != nil {
		s.log.Debug("admin: writing stats", "error", err)
	}
}

func (s *Server) handlePrometheus(w http.ResponseWriter, r *http.Request) {
	if s.deps.Stats == nil {
		notImplemented(w, r)
		return
	}
	w.Header().Set("Content-Type", ctPrometheus)
	if err := observe.WritePrometheus(w, s.deps.Stats); err != nil {
		s.log.Debug("admin: writing prometheus stats", "error", err)
	}
}

func (s *Server) handleConfigDump(w http.ResponseWriter, r *http.Request) {
	if s.deps.ConfigDump == nil {
		notImplemented(w, r)
		return
	}
	s.writeJSON(w, r, s.deps.ConfigDump())
}

func (s *Server) handleClusters(w http.ResponseWriter, r *http.Request) {
	if s.deps.Clusters == nil {
		notImplemented(w, r)
		return
	}
	f, ok := format(w, r, "", "text", "json")
	if !ok {
		return
	}
	if f == "json" {
		w.Header().Set("Content-Type", ctJSON)
	} else {
		f = "text"
		w.Header().Set("Content-Type", ctText)
	}
	s.deps.Clusters(w, f)
}

// Envoy's /listeners?format=json shape.
type listenerStatuses struct {
	ListenerStatuses []listenerStatus `json:"listener_statuses"`
}

type listenerStatus struct {
	Name         string  `json:"name"`
	LocalAddress address `json:"local_address"`
}

type address struct {
	SocketAddress *socketAddress `json:"socket_address,omitempty"`
	Pipe          *pipe          `json:"pipe,omitempty"`
}

type socketAddress struct {
	Address   string `json:"address"`
	PortValue int    `json:"port_value"`
}

type pipe struct {
	Path string `json:"path"`
}

func toAddress(s string) address {
	host, port, err := net.SplitHostPort(s)
	if err == nil {
		if p, err := strconv.ParseUint(port, 10, 16); err == nil {
			return address{SocketAddress: &socketAddress{Address: host, PortValue: int(p)}}
		}
	}
	return address{Pipe: &pipe{Path: s}}
}

func (s *Server) handleListeners(w http.ResponseWriter, r *http.Request) {
	if s.deps.Listeners == nil {
		notImplemented(w, r)
		return
	}
	f, ok := format(w, r, "", "text", "json")
	if !ok {
		return
	}
	ls := s.deps.Listeners()
	if f == "json" {
		out := listenerStatuses{ListenerStatuses: make([]listenerStatus, 0, len(ls))}
		for _, l := range ls {
			out.ListenerStatuses = append(out.ListenerStatuses, listenerStatus{Name: l.Name, LocalAddress: toAddress(l.Address)})
		}
		s.writeJSON(w, r, out)
		return
	}
	var b bytes.Buffer
	for _, l := range ls {
		b.WriteString(l.Name)
		b.WriteString("::")
		b.WriteString(l.Address)
		b.WriteByte('\n')
	}
	writeText(w, http.StatusOK, b.String())
}

// defaultServerInfo is a subset of Envoy's ServerInfo message.
type defaultServerInfo struct {
	Version            string             `json:"version"`
	State              string             `json:"state"`
	UptimeCurrentEpoch string             `json:"uptime_current_epoch"`
	UptimeAllEpochs    string             `json:"uptime_all_epochs"`
	CommandLineOptions commandLineOptions `json:"command_line_options"`
}

type commandLineOptions struct {
	Args []string `json:"args"`
}

func (s *Server) handleServerInfo(w http.ResponseWriter, r *http.Request) {
	if s.deps.ServerInfo != nil {
		s.writeJSON(w, r, s.deps.ServerInfo())
		return
	}
	version := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		version = bi.Main.Version
	}
	up := strconv.FormatInt(int64(time.Since(s.started)/time.Second), 10) + "s"
	s.writeJSON(w, r, defaultServerInfo{
		Version:            version,
		State:              s.State(),
		UptimeCurrentEpoch: up,
		UptimeAllEpochs:    up,
		CommandLineOptions: commandLineOptions{Args: os.Args},
	})
}

func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request) {
	if s.deps.Drain == nil {
		notImplemented(w, r)
		return
	}
	q := r.URL.Query()
	s.deps.Drain(q.Has("inboundonly"), q.Has("graceful"))
	writeText(w, http.StatusOK, "OK\n")
}

func (s *Server) handleHealthcheck(fail bool) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		s.hcFailed.Store(fail)
		writeText(w, http.StatusOK, "OK\n")
	}
}

func (s *Server) handleQuit(w http.ResponseWriter, r *http.Request) {
	if s.deps.Quit == nil {
		notImplemented(w, r)
		return
	}
	writeText(w, http.StatusOK, "OK\n")
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	go s.deps.Quit()
}
