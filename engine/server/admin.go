package server

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/sluice-proxy/sluice/engine/admin"
	"github.com/sluice-proxy/sluice/engine/config"
)

// adminServer is the admin endpoint, started with the first snapshot.
type adminServer struct {
	srv *admin.Server
}

// DefaultAdminAddress is where the admin server listens when no config
// names an address: loopback only, never a public interface by default.
const DefaultAdminAddress = "127.0.0.1:9901"

func (s *Server) startAdmin(snap *config.Snapshot) error {
	if s.admin.srv != nil {
		return nil
	}
	addr := s.opts.AdminAddress
	if addr == "" && snap.Admin != nil {
		addr = snap.Admin.Address
	}
	if addr == "" {
		addr = DefaultAdminAddress
	}
	if addr == "off" {
		return nil
	}
	srv := admin.New(addr, admin.Deps{
		Stats:      s.stats,
		ConfigDump: s.configDump,
		Clusters:   s.writeClusters,
		Listeners:  s.listenerInfo,
		Drain:      s.DrainListeners,
		Quit:       s.Quit,
		State:      s.State,
		ServerInfo: s.serverInfo,
	}, s.log)
	if err := srv.Start(); err != nil {
		return fmt.Errorf("server: admin: %w", err)
	}
	s.admin.srv = srv
	return nil
}

// AdminAddr returns the admin server's bound address, or "".
func (s *Server) AdminAddr() string {
	if s.admin.srv == nil {
		return ""
	}
	return s.admin.srv.Addr()
}

func (s *Server) closeAdmin() {
	if s.admin.srv != nil {
		s.admin.srv.Close()
	}
}

func (s *Server) configDump() any {
	g := s.current.Load()
	if g != nil && g.snap.EnvoyDump != nil {
		b, err := g.snap.EnvoyDump()
		if err == nil {
			return json.RawMessage(b)
		}
		s.log.Error("config dump", "err", err)
	}
	out := map[string]any{
		"state":      s.State(),
		"last_error": s.LastError(),
	}
	if g != nil {
		out["version"] = g.snap.Version
		out["source"] = g.snap.Source
		out["applied_at"] = g.applied.UTC().Format(time.RFC3339)
		out["config"] = g.snap
	}
	return out
}

func (s *Server) listenerInfo() []admin.ListenerInfo {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	out := make([]admin.ListenerInfo, 0, len(s.listeners))
	for _, name := range sortedKeys(s.listeners) {
		out = append(out, admin.ListenerInfo{Name: name, Address: s.listeners[name].Addr().String()})
	}
	return out
}

func (s *Server) serverInfo() any {
	return map[string]any{
		"version":              s.opts.Version,
		"state":                s.State(),
		"hostname":             hostname(),
		"uptime_current_epoch": fmt.Sprintf("%ds", int(time.Since(s.started).Seconds())),
		"command_line_options": map[string]any{"args": os.Args},
	}
}

// writeClusters renders /clusters in Envoy's text format or as JSON.
func (s *Server) writeClusters(w io.Writer, format string) {
	set := s.upstreams.Current()
	if set == nil {
		return
	}
	type hostJSON struct {
		Address   string `json:"address"`
		Hostname  string `json:"hostname,omitempty"`
		Weight    uint32 `json:"weight"`
		Healthy   bool   `json:"healthy"`
		CxActive  int64  `json:"cx_active"`
		CxTotal   uint64 `json:"cx_total"`
		RqActive  int64  `json:"rq_active"`
		RqTotal   uint64 `json:"rq_total"`
		RqError   uint64 `json:"rq_error"`
		RqSuccess uint64 `json:"rq_success"`
		// Ejected: outlier detection took the host out for now.
		Ejected bool `json:"ejected,omitempty"`
	}
	type clusterJSON struct {
		Name  string     `json:"name"`
		Hosts []hostJSON `json:"host_statuses"`
	}
	var all []clusterJSON
	for _, c := range set.Clusters() {
		cj := clusterJSON{Name: c.Name()}
		for _, h := range slices.Concat(c.Hosts(), c.OriginalDstHostList()) {
			st := h.Snapshot()
			cj.Hosts = append(cj.Hosts, hostJSON{Address: h.Address(), Hostname: h.Hostname(), Weight: h.Weight(), Healthy: h.Healthy(),
				CxActive: st.CxActive, CxTotal: st.CxTotal, RqActive: st.RqActive, RqTotal: st.RqTotal, RqError: st.RqError, RqSuccess: st.RqSuccess, Ejected: h.Ejected()})
		}
		all = append(all, cj)
	}
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(map[string]any{"cluster_statuses": all})
		return
	}
	for _, c := range all {
		cb := c.Name
		for _, h := range c.Hosts {
			p := cb + "::" + h.Address + "::"
			fmt.Fprintf(w, "%scx_active::%d\n%scx_total::%d\n%srq_active::%d\n%srq_total::%d\n%srq_error::%d\n%srq_success::%d\n%sweight::%d\n",
				p, h.CxActive, p, h.CxTotal, p, h.RqActive, p, h.RqTotal, p, h.RqError, p, h.RqSuccess, p, h.Weight)
			var health string
			if !h.Healthy {
				health = "/failed_eds_health"
			}
			if h.Ejected {
				health += "/failed_outlier_check"
			}
			if health == "" {
				health = "healthy"
			}
			fmt.Fprintf(w, "%shealth_flags::%s\n", p, health)
			if h.Hostname != "" {
				fmt.Fprintf(w, "%shostname::%s\n", p, h.Hostname)
			}
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
