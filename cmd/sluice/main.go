// Command sluice is the Sluice proxy: run it, validate configs, print its
// version.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/sluice-proxy/sluice/dsl/compile"
	"github.com/sluice-proxy/sluice/engine/config"
	"github.com/sluice-proxy/sluice/engine/observe"
	"github.com/sluice-proxy/sluice/engine/server"
	"github.com/sluice-proxy/sluice/xds"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "0.1.0-dev"

const usage = `Sluice is a programmable proxy: routes and filters from Envoy configs
(and soon the Sluice DSL, Lua and WebAssembly), hot-swapped with no request lost.

Usage:
  sluice run [-c FILE] [flags]   run the proxy (no -c: the built-in quickstart)
  sluice validate FILE...        check config files; exit 1 on any error
  sluice fmt [-w] FILE...        print (or rewrite) .sluice files in canonical layout
  sluice explain FILE METHOD URL [-H 'K: V']... [--source IP]
                                 show the route and every action a request meets
  sluice test FILE...            run the test blocks of .sluice files
  sluice version                 print the version
  sluice help [COMMAND]          show help

Config files:
  *.sluice                       the Sluice rule language (docs/dsl.md)
  *.yaml, *.yml, *.json          an Envoy v3 bootstrap (static_resources)

Quickstart:
  go run ./cmd/sluice            then: curl -si http://127.0.0.1:8080/
                                       curl -s http://127.0.0.1:9901/stats/prometheus

Run 'sluice help run' for the flags of run.
`

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

func runMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return cmdRun(nil, stdout, stderr)
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "fmt":
		return cmdFmt(args[1:], stdout, stderr)
	case "explain":
		return cmdExplain(args[1:], stdout, stderr)
	case "test":
		return cmdTest(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "sluice %s\n", Version)
		return 0
	case "help", "-h", "--help", "-help":
		if len(args) > 1 {
			return runMain([]string{args[1], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
		return 0
	}
	if strings.HasPrefix(args[0], "-") {
		// Flags without a command mean "run".
		return cmdRun(args, stdout, stderr)
	}
	fmt.Fprintf(stderr, "sluice: unknown command %q\n\n%s", args[0], usage)
	return 2
}

// loadOptions are the run command's settings for reading Envoy bootstraps.
type loadOptions struct {
	// configYAML is merged over the file (Envoy's --config-yaml).
	configYAML string
	// allowUnknown ignores unknown bootstrap fields
	// (--allow-unknown-static-fields).
	allowUnknown bool
}

// loadConfig reads a config file by its extension. A file that declares
// no listener is refused: it serves nothing, and it is what a half-written
// file often looks like — unless it is a bootstrap whose listeners come
// from a control plane.
func loadConfig(path string) (*config.Snapshot, error) { return loadConfigWith(path, loadOptions{}) }

func loadConfigWith(path string, opts loadOptions) (*config.Snapshot, error) {
	lc, err := loadAll(path, opts)
	if err != nil {
		return nil, err
	}
	return lc.snap, nil
}

// loadedConfig is a config file read: its snapshot and, for an Envoy
// bootstrap, the decoded bootstrap (the xDS client's input).
type loadedConfig struct {
	snap      *config.Snapshot
	bootstrap *bootstrapv3.Bootstrap
	loaded    time.Time
}

// dynamic reports whether the config comes (also) from an xDS control plane.
func (lc *loadedConfig) dynamic() bool {
	return lc.bootstrap.GetDynamicResources().GetAdsConfig() != nil
}

func loadAll(path string, opts loadOptions) (*loadedConfig, error) {
	lc := &loadedConfig{loaded: time.Now()}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml", ".json":
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("xds: %w", err)
		}
		lc.snap, lc.bootstrap, err = xds.LoadBootstrapWith(data, path, xds.DecodeOptions{AllowUnknownFields: opts.allowUnknown}, []byte(opts.configYAML))
		if err != nil {
			return nil, err
		}
		b, at := lc.bootstrap, lc.loaded
		lc.snap.EnvoyDump = func() ([]byte, error) { return xds.ConfigDump(b, at, nil) }
	case ".sluice":
		if opts.configYAML != "" {
			return nil, fmt.Errorf("%s: --config-yaml applies to Envoy bootstraps only", path)
		}
		res, err := loadDSL(path)
		if err != nil {
			return nil, err
		}
		lc.snap = res.Snapshot
	default:
		return nil, fmt.Errorf("%s: unknown config type %q (want .yaml, .yml or .json)", path, filepath.Ext(path))
	}
	if len(lc.snap.Listeners) == 0 && !lc.dynamic() {
		return nil, fmt.Errorf("%s: no listener is declared: nothing would be served", path)
	}
	return lc, nil
}

// watchPaths lists the files a config was read from — for a .sluice file
// its imports and the Lua and Wasm files it names — even when it failed to
// load, so fixing any of them is noticed.
func watchPaths(path string, _ *config.Snapshot) []string {
	if strings.EqualFold(filepath.Ext(path), ".sluice") {
		return compile.WatchPaths(path, os.ReadFile)
	}
	return []string{path}
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "Usage: sluice validate FILE...\n\nCompiles each config file as 'run' would (routes, clusters, filters) without\nbinding any port, prints every error with where it is, and exits 1 on any.\n")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	bad := 0
	for _, path := range fs.Args() {
		snap, err := loadConfig(path)
		if err == nil {
			err = server.Check(snap, builtins(observe.NewStore()))
		}
		if err != nil {
			msg := err.Error()
			if !strings.Contains(msg, path) {
				msg = path + ": " + msg
			}
			fmt.Fprintln(stderr, msg)
			bad++
			continue
		}
		fmt.Fprintf(stdout, "%s: ok (%d listeners, %d clusters)\n", path, len(snap.Listeners), len(snap.Clusters))
	}
	if bad > 0 {
		return 1
	}
	return 0
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "", "config file (Envoy v3 bootstrap .yaml/.json); empty runs the quickstart")
	adminAddr := fs.String("admin", "", "admin address, overriding the config's (\"off\" disables it)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	drain := fs.Duration("drain-timeout", 10*time.Second, "how long SIGTERM waits for requests in flight")
	watch := fs.Duration("watch", time.Second, "how often to check the config file (and what it includes) for changes; 0 disables")
	envoy := addEnvoyFlags(fs, cfgPath, logLevel)
	fs.Usage = func() {
		fmt.Fprint(stderr, `Usage: sluice run [-c FILE] [flags]

Runs the proxy. With no -c it runs the quickstart: a listener on
127.0.0.1:8080 in front of a demo upstream it starts on 127.0.0.1:8081,
and the admin server on 127.0.0.1:9901.

The config file is watched: a change is applied with no request lost; a bad
file is logged with its position and the running config keeps serving.
Signals: SIGHUP reloads the config file at once; SIGTERM or SIGINT drains and
exits.

Envoy's command-line options that Istio's pilot-agent passes are accepted too
(-c, --config-path, -l, --drain-time-s, --drain-strategy, --concurrency,
--local-address-ip-version, --file-flush-interval-msec, --disable-hot-restart,
--allow-unknown-static-fields, --component-log-level, ...), so sluice can run
as Istio's proxy binary.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	level, err := parseLogLevel(*logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "sluice: -log-level: %v\n", err)
		return 2
	}
	if err := envoy.check(); err != nil {
		fmt.Fprintf(stderr, "sluice: %v\n", err)
		return 2
	}
	if envoy.concurrency > 0 {
		runtime.GOMAXPROCS(envoy.concurrency)
	}
	observe.SetFileFlushInterval(envoy.fileFlushInterval())
	lopts := loadOptions{configYAML: envoy.configYAML, allowUnknown: envoy.allowUnknownStatic}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var snap *config.Snapshot
	var lc *loadedConfig
	if *cfgPath == "" {
		_, stop, err := startDemoUpstream(demoUpstreamAddr, log)
		if err != nil {
			log.Error("quickstart", "err", err)
			return 1
		}
		defer stop()
		snap, err = loadQuickstart()
		if err != nil {
			log.Error("quickstart config", "err", err)
			return 1
		}
		snap.Source = "embedded quickstart"
	} else if lc, err = loadAll(*cfgPath, lopts); err != nil {
		log.Error("config rejected", "err", err)
		return 1
	} else {
		snap = lc.snap
	}

	stats := observe.NewStore()
	srv := server.New(server.Options{Registry: builtins(stats), Stats: stats, Log: log, Version: Version, AdminAddress: *adminAddr, DrainTimeout: *drain, DrainTime: envoy.drainTime(),
		WaitForInit: lc != nil && lc.dynamic()})
	if lc != nil && lc.dynamic() {
		// The xDS client applies the static resources, then what the control
		// plane sends, for as long as sluice runs.
		client, err := newXDSClient(lc, envoy, srv, stats, log)
		if err != nil {
			log.Error("config rejected", "err", err)
			return 1
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		started := make(chan error, 1)
		go func() { started <- client.Run(ctx) }()
		if err := waitStatics(srv, started); err != nil {
			log.Error("config rejected", "err", err)
			return 1
		}
		go markInitialized(ctx, srv, client, lc.bootstrap, log)
	} else if err := srv.Apply(snap); err != nil {
		log.Error("config rejected", "err", err)
		return 1
	}
	if *cfgPath == "" {
		fmt.Fprintf(stdout, "Sluice quickstart is running.\n  try:   curl -si http://127.0.0.1:8080/\n  stats: curl -s http://%s/stats/prometheus\n  stop:  Ctrl-C\n", srv.AdminAddr())
	}

	reload := func() []string {
		if lc != nil && lc.dynamic() {
			// As Envoy, the bootstrap of an xDS-fed proxy is read at start.
			log.Warn("the bootstrap has dynamic_resources: changes to it apply at the next start", "file", *cfgPath)
			return watchPaths(*cfgPath, nil)
		}
		next, err := loadConfigWith(*cfgPath, lopts)
		if err == nil {
			err = srv.Apply(next)
		}
		if err != nil {
			log.Error("reload rejected; the running config keeps serving", "err", err)
		}
		return watchPaths(*cfgPath, next)
	}
	reloads := make(chan chan []string)
	if *cfgPath != "" && *watch > 0 {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		// Reloads run on the main goroutine, one at a time, whether a file
		// change or SIGHUP asked for them.
		go newWatcher(*watch, watchPaths(*cfgPath, snap)).run(ctx, func() []string {
			reply := make(chan []string)
			select {
			case reloads <- reply:
				return <-reply
			case <-ctx.Done():
				return nil
			}
		})
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	for {
		select {
		case <-srv.Done():
			log.Info("quit requested through the admin server")
			srv.Shutdown()
			return 0
		case reply := <-reloads:
			log.Info("config file changed: reloading", "file", *cfgPath)
			reply <- reload()
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				if *cfgPath == "" {
					log.Info("SIGHUP: the quickstart has no file to reload")
					continue
				}
				reload()
				continue
			}
			log.Info("draining", "signal", sig.String(), "timeout", drain.String())
			srv.Shutdown()
			return 0
		}
	}
}
