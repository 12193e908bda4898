package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/sluice-proxy/sluice/samples/grpc/greeter"
)

// TestWasmGrpcCall: a proxy-wasm filter calls grpc.health.v1.Health/Check
// (proxy_grpc_call) on an HTTP/2 cluster serving the sample gRPC service,
// and hands the status and response message to the app upstream in a
// request header. A request whose call fails gets the guest's local reply.
func TestWasmGrpcCall(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := greeter.New()
	go svc.Serve(lis)
	t.Cleanup(svc.Stop)

	seen := make(chan string, 4)
	app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get("X-Grpc-Result")
		io.WriteString(w, "app")
	})
	module, err := filepath.Abs("../../wasm/testdata/goguest.wasm")
	if err != nil {
		t.Fatal(err)
	}
	src := `
upstream grpc_cluster {
  endpoint ` + lis.Addr().String() + `
  protocol http2
}
upstream app {
  endpoint ` + app.addr() + `
}
listener main 127.0.0.1:1 {
  wasm "` + module + `" config "mode=grpccall"
  route all {
    proxy app
  }
}
`
	path := filepath.Join(t.TempDir(), "grpc.sluice")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := loadDSL(path)
	if err != nil {
		t.Fatal(err)
	}
	res.Snapshot.Listeners[0].Address = "127.0.0.1:0"
	srv := startServer(t, res.Snapshot)
	base := "http://" + srv.ListenerAddr("main").String()

	for _, p := range []string{"/", "/raw"} {
		resp, err := http.Get(base + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "app" {
			t.Fatalf("%s: status %d body %q", p, resp.StatusCode, body)
		}
		// OK, and HealthCheckResponse{status: SERVING} is 08 01.
		if got := <-seen; got != "0 0801" {
			t.Errorf("%s: upstream saw x-grpc-result %q, want \"0 0801\"", p, got)
		}
	}

	// The service is gone: the call fails, the guest answers.
	svc.Stop()
	resp, err := http.Get(base + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || len(body) < 8 || string(body[:8]) != "grpc 14 " {
		t.Errorf("with the service down: status %d body %q", resp.StatusCode, body)
	}
	if app.hits.Load() != 2 {
		t.Errorf("app hits %d, want 2", app.hits.Load())
	}
}

// streamer is the test service sluice.test.Streamer of the streaming
// tests, its messages google.protobuf.StringValue: Count (server
// streaming: "1".."n", then trailer x-count), Chat (bidi: each message
// back in upper case, "fail" fails the call PERMISSION_DENIED; trailer
// x-count at the client's end) and Hold (one message "held", then it
// waits for the client to go away and reports that on held).
type streamer struct{ held chan error }

var streamerDesc = grpc.ServiceDesc{
	ServiceName: "sluice.test.Streamer",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{
		{StreamName: "Count", ServerStreams: true, Handler: func(_ any, ss grpc.ServerStream) error {
			if md, _ := metadata.FromIncomingContext(ss.Context()); len(md.Get("x-from-wasm")) != 1 || md.Get("x-from-wasm")[0] != "stream" {
				return status.Errorf(codes.InvalidArgument, "metadata %v", md)
			}
			in := new(wrapperspb.StringValue)
			if err := ss.RecvMsg(in); err != nil {
				return err
			}
			n, err := strconv.Atoi(in.GetValue())
			if err != nil || n > 100 {
				return status.Error(codes.InvalidArgument, "not a count")
			}
			for i := 1; i <= n; i++ {
				if err := ss.SendMsg(wrapperspb.String(strconv.Itoa(i))); err != nil {
					return err
				}
			}
			ss.SetTrailer(metadata.Pairs("x-count", strconv.Itoa(n)))
			return nil
		}},
		{StreamName: "Chat", ServerStreams: true, ClientStreams: true, Handler: func(_ any, ss grpc.ServerStream) error {
			n := 0
			for {
				in := new(wrapperspb.StringValue)
				err := ss.RecvMsg(in)
				if err == io.EOF {
					ss.SetTrailer(metadata.Pairs("x-count", strconv.Itoa(n)))
					return nil
				}
				if err != nil {
					return err
				}
				if in.GetValue() == "fail" {
					return status.Error(codes.PermissionDenied, "told to fail")
				}
				if err := ss.SendMsg(wrapperspb.String(strings.ToUpper(in.GetValue()))); err != nil {
					return err
				}
				n++
			}
		}},
		{StreamName: "Hold", ServerStreams: true, Handler: func(srv any, ss grpc.ServerStream) error {
			in := new(wrapperspb.StringValue)
			if err := ss.RecvMsg(in); err != nil {
				return err
			}
			if err := ss.SendMsg(wrapperspb.String("held")); err != nil {
				return err
			}
			<-ss.Context().Done()
			srv.(*streamer).held <- ss.Context().Err()
			return ss.Context().Err()
		}},
	},
}

// startStreamer serves sluice.test.Streamer on a loopback port.
func startStreamer(t *testing.T) (*streamer, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &streamer{held: make(chan error, 4)}
	gs := grpc.NewServer()
	gs.RegisterService(&streamerDesc, s)
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return s, lis.Addr().String()
}

// refusingAddr is a loopback address nothing listens on.
func refusingAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

// startWasmStreamServer runs sluice with the Go guest in mode on every
// request, grpc_cluster on the streamer and down_cluster on a port that
// refuses connections; requests go on to an app that reports the header
// hdr it received.
func startWasmStreamServer(t *testing.T, mode, grpcAddr, hdr string) (string, chan string) {
	t.Helper()
	seen := make(chan string, 16)
	app := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Get(hdr)
		io.WriteString(w, "app")
	})
	module, err := filepath.Abs("../../wasm/testdata/goguest.wasm")
	if err != nil {
		t.Fatal(err)
	}
	src := `
upstream grpc_cluster {
  endpoint ` + grpcAddr + `
  protocol http2
}
upstream down_cluster {
  endpoint ` + refusingAddr(t) + `
  protocol http2
}
upstream app {
  endpoint ` + app.addr() + `
}
listener main 127.0.0.1:1 {
  wasm "` + module + `" config "mode=` + mode + `"
  route all {
    proxy app
  }
}
`
	path := filepath.Join(t.TempDir(), "stream.sluice")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := loadDSL(path)
	if err != nil {
		t.Fatal(err)
	}
	res.Snapshot.Listeners[0].Address = "127.0.0.1:0"
	srv := startServer(t, res.Snapshot)
	return "http://" + srv.ListenerAddr("main").String(), seen
}

// get requests url and returns what the app saw in the reported header.
func getSeen(t *testing.T, url string, seen chan string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "app" {
		t.Fatalf("%s: status %d body %q", url, resp.StatusCode, body)
	}
	select {
	case v := <-seen:
		return v
	default:
		t.Fatalf("%s: the app was not reached", url)
		return ""
	}
}

// TestWasmGrpcStream: a proxy-wasm filter opens gRPC streams
// (proxy_grpc_stream) from its stream context to a grpc-go server,
// through sluice's HTTP/2 pool, and reports the callbacks it got, in
// order, to the app in x-stream: server streaming, bidi (each answer
// brings the next message), a cancel mid-stream, an error status from
// the service, an upstream that refuses connections, unknown clusters.
func TestWasmGrpcStream(t *testing.T) {
	svc, grpcAddr := startStreamer(t)
	base, seen := startWasmStreamServer(t, "grpcstream", grpcAddr, "X-Stream")
	for _, tc := range []struct{ path, want string }{
		{"/count", "im:application/grpc,m:1,m:2,m:3,tm:3,close:0:,after:0:1"},
		{"/count-raw", "im:application/grpc,m:1,m:2,tm:2,close:0:,after:0:1"},
		{"/count-bad", "im:-,tm:-,close:3:not a count,after:0:1"}, // trailers-only
		{"/chat", "im:application/grpc,m:A,m:B,half:0,tm:2,close:0:,after:0:1"},
		{"/chat-fail", "im:application/grpc,m:A,tm:-,close:7:told to fail,after:0:1"},
		{"/hold", "im:application/grpc,m:held,cancel:0:1"},
		{"/unknown", "open:10:4"},
		{"/misuse", "misuse:2:1:0:2:0:1:1"},
	} {
		if got := getSeen(t, base+tc.path, seen); got != tc.want {
			t.Errorf("%s: x-stream = %q\nwant               %q", tc.path, got, tc.want)
		}
	}
	// The cancelled stream was reset: the service saw its client go.
	select {
	case err := <-svc.held:
		if err == nil {
			t.Error("Hold ended without an error")
		}
	case <-time.After(10 * time.Second):
		t.Error("the service never saw the cancelled stream end")
	}

	got := getSeen(t, base+"/down", seen)
	if !strings.HasPrefix(got, "tm:-,close:14:") || !strings.HasSuffix(got, ",after:0:1") {
		t.Errorf("/down: x-stream = %q, want UNAVAILABLE", got)
	}
}

// TestWasmGrpcStreamRootContext: a stream opened from the root context
// (on a tick, no request) reaches the running config's cluster through
// the registry's HTTPCall.
func TestWasmGrpcStreamRootContext(t *testing.T) {
	_, grpcAddr := startStreamer(t)
	base, seen := startWasmStreamServer(t, "grpcstream-root", grpcAddr, "X-Root-Stream")
	want := "im:application/grpc,m:1,m:2,tm:2,close:0:,after:0:1"
	var got string
	for range 500 {
		if got = getSeen(t, base+"/", seen); got == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("x-root-stream = %q, want %q", got, want)
}
