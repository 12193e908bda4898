package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/sluice-proxy/sluice/engine/config"
)

// grpcInteropCases are the gRPC interop cases that need no cloud
// credentials.
var grpcInteropCases = []string{
	"empty_unary", "large_unary", "client_streaming", "server_streaming",
	"ping_pong", "empty_stream", "timeout_on_sleeping_server",
	"cancel_after_begin", "cancel_after_first_response",
	"status_code_and_message", "special_status_message", "custom_metadata",
	"unimplemented_method", "unimplemented_service",
}

// TestGRPCInterop runs grpc-go's interop client through sluice (h2c
// downstream, HTTP/2 upstream) to grpc-go's interop server.
func TestGRPCInterop(t *testing.T) {
	client := tool(t, "client")
	server := tool(t, "server")

	// The interop server listens on every interface; only loopback traffic
	// is sent to it.
	port := freePort(t)
	startProcess(t, server, "--port="+strconv.Itoa(port))
	upstream := fmt.Sprintf("127.0.0.1:%d", port)
	waitListening(t, upstream)

	for _, codec := range []config.Codec{config.CodecHTTP2, config.CodecAuto} {
		t.Run(string(codec), func(t *testing.T) {
			m := hcm(&config.Route{Name: "grpc", Match: config.RouteMatch{Prefix: "/"},
				Action: &config.RouteAction{Cluster: "interop", Timeout: 30 * time.Second}})
			m.Codec = codec
			cl := cluster("interop", upstream)
			cl.Protocol = config.ProtocolHTTP2
			srv := startServer(t, snapshot(m, cl))
			_, proxyPort, _ := net.SplitHostPort(srv.ListenerAddr("main").String())

			for _, tc := range grpcInteropCases {
				t.Run(tc, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
					defer cancel()
					out, err := exec.CommandContext(ctx, client,
						"--server_host=127.0.0.1", "--server_port="+proxyPort,
						"--test_case="+tc).CombinedOutput()
					if err != nil {
						t.Fatalf("interop client %s: %v\n%s", tc, err, out)
					}
				})
			}
		})
	}
}
