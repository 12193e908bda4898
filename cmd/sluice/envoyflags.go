package main

import (
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// envoyFlags are the Envoy command-line options Istio's pilot-agent passes
// to its proxy binary (-c FILE --drain-time-s N --drain-strategy immediate
// --local-address-ip-version v4 --file-flush-interval-msec N
// --disable-hot-restart --allow-unknown-static-fields -l LEVEL
// --component-log-level ... [--concurrency N]), so that sluice can be that
// binary. The ones sluice has no use for are accepted and checked, so a
// typo still fails loudly.
type envoyFlags struct {
	drainTimeS         int
	drainStrategy      string
	localAddrIPVersion string
	fileFlushMsec      int
	disableHotRestart  bool
	allowUnknownStatic bool
	componentLogLevel  string
	concurrency        int
	logFormat          string
	logFormatLocation  string
	restartEpoch       int
	parentShutdownS    int
	serviceCluster     string
	serviceNode        string
	serviceZone        string
	configYAML         string
}

func addEnvoyFlags(fs *flag.FlagSet, cfgPath, logLevel *string) *envoyFlags {
	e := &envoyFlags{}
	fs.StringVar(cfgPath, "config-path", "", "same as -c (Envoy's name)")
	fs.StringVar(logLevel, "l", "info", "same as -log-level; also Envoy's names: trace, warning, critical, off")
	fs.IntVar(&e.drainTimeS, "drain-time-s", 10, "seconds POST /drain_listeners?graceful keeps listeners accepting, each connection closed after its request, before it stops them")
	fs.StringVar(&e.drainStrategy, "drain-strategy", "gradual", "gradual or immediate: sluice tells every connection to close as soon as draining starts (immediate) either way")
	fs.StringVar(&e.localAddrIPVersion, "local-address-ip-version", "v4", "v4 or v6: the family of the proxy's own address (accepted for Envoy compatibility)")
	fs.IntVar(&e.fileFlushMsec, "file-flush-interval-msec", 1000, "how often access log files are flushed, in milliseconds")
	fs.BoolVar(&e.disableHotRestart, "disable-hot-restart", false, "accepted for Envoy compatibility (sluice has no shared-memory hot restart)")
	fs.BoolVar(&e.allowUnknownStatic, "allow-unknown-static-fields", false, "accept fields of the bootstrap unknown to sluice's Envoy API version (they are ignored)")
	fs.StringVar(&e.componentLogLevel, "component-log-level", "", "COMPONENT:LEVEL,... (accepted and checked; sluice logs with one level)")
	fs.IntVar(&e.concurrency, "concurrency", 0, "worker threads: sets GOMAXPROCS (0: all cores)")
	fs.StringVar(&e.logFormat, "log-format", "", "accepted for Envoy compatibility (sluice logs with log/slog's text format)")
	fs.StringVar(&e.logFormatLocation, "log-format-prefix-with-location", "", "accepted for Envoy compatibility")
	fs.IntVar(&e.restartEpoch, "restart-epoch", 0, "hot restart epoch: only 0 is supported")
	fs.IntVar(&e.parentShutdownS, "parent-shutdown-time-s", 0, "accepted for Envoy compatibility (no hot restart)")
	fs.StringVar(&e.serviceCluster, "service-cluster", "", "node.cluster for xDS when the bootstrap sets none")
	fs.StringVar(&e.serviceNode, "service-node", "", "node.id for xDS when the bootstrap sets none")
	fs.StringVar(&e.serviceZone, "service-zone", "", "node.locality.zone for xDS when the bootstrap sets none")
	fs.StringVar(&e.configYAML, "config-yaml", "", "a bootstrap in YAML or JSON merged over the -c file (Envoy's --config-yaml)")
	return e
}

// check validates the values sluice does not otherwise use.
func (e *envoyFlags) check() error {
	switch {
	case e.drainTimeS < 0:
		return fmt.Errorf("--drain-time-s %d: must not be negative", e.drainTimeS)
	case e.drainStrategy != "gradual" && e.drainStrategy != "immediate":
		return fmt.Errorf("--drain-strategy %q: want gradual or immediate", e.drainStrategy)
	case e.localAddrIPVersion != "v4" && e.localAddrIPVersion != "v6":
		return fmt.Errorf("--local-address-ip-version %q: want v4 or v6", e.localAddrIPVersion)
	case e.fileFlushMsec <= 0:
		return fmt.Errorf("--file-flush-interval-msec %d: must be positive", e.fileFlushMsec)
	case e.concurrency < 0:
		return fmt.Errorf("--concurrency %d: must not be negative", e.concurrency)
	case e.restartEpoch != 0:
		return fmt.Errorf("--restart-epoch %d: sluice has no hot restart; only 0 is supported", e.restartEpoch)
	}
	if e.componentLogLevel != "" {
		for _, cl := range strings.Split(e.componentLogLevel, ",") {
			name, level, ok := strings.Cut(cl, ":")
			if !ok || name == "" {
				return fmt.Errorf("--component-log-level %q: want COMPONENT:LEVEL,...", e.componentLogLevel)
			}
			if _, err := parseLogLevel(level); err != nil {
				return fmt.Errorf("--component-log-level %q: %w", e.componentLogLevel, err)
			}
		}
	}
	return nil
}

func (e *envoyFlags) drainTime() time.Duration { return time.Duration(e.drainTimeS) * time.Second }

func (e *envoyFlags) fileFlushInterval() time.Duration {
	return time.Duration(e.fileFlushMsec) * time.Millisecond
}

// parseLogLevel reads slog's level names and Envoy's (trace, warning,
// critical, off).
func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "trace":
		return slog.LevelDebug, nil
	case "warning":
		return slog.LevelWarn, nil
	case "critical":
		return slog.LevelError, nil
	case "off":
		return slog.LevelError + 100, nil
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("bad log level %q (want trace, debug, info, warn(ing), error, critical or off)", s)
	}
	return l, nil
}
