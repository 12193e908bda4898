package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/sluice-proxy/sluice/samples/grpc/greeter"
)

// TestSampleGRPC loads samples/grpc as its README runs it: the sample
// service behind sluice, called with a gRPC client.
func TestSampleGRPC(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svc := greeter.New()
	go svc.Serve(lis)
	t.Cleanup(svc.Stop)

	res, err := loadDSL("../../samples/grpc/grpc.sluice")
	if err != nil {
		t.Fatal(err)
	}
	snap := res.Snapshot
	snap.Admin = nil
	snap.Listeners[0].Address = "127.0.0.1:0"
	snap.Clusters[0].Endpoints[0].Address = lis.Addr().String()
	srv := startServer(t, snap)
	addr := srv.ListenerAddr("grpc").String()

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	health := healthpb.NewHealthClient(conn)

	t.Run("unary", func(t *testing.T) {
		for _, service := range []string{"", "greeter"} {
			resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
			if err != nil {
				t.Fatalf("Check(%q): %v", service, err)
			}
			if resp.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("Check(%q) = %v", service, resp.Status)
			}
		}
		// An error status with its message passes through from the service.
		_, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: "nope"})
		if status.Code(err) != codes.NotFound {
			t.Fatalf("Check(unknown) = %v, want NotFound", err)
		}
	})

	keyed := metadata.AppendToOutgoingContext(ctx, "x-api-key", "let-me-in")

	t.Run("server streaming", func(t *testing.T) {
		wctx, wcancel := context.WithCancel(keyed)
		defer wcancel()
		watch, err := health.Watch(wctx, &healthpb.HealthCheckRequest{Service: "greeter"})
		if err != nil {
			t.Fatal(err)
		}
		first, err := watch.Recv()
		if err != nil || first.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("first update = %v, %v", first, err)
		}
		svc.Health.SetServingStatus("greeter", healthpb.HealthCheckResponse_NOT_SERVING)
		next, err := watch.Recv()
		if err != nil || next.Status != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("second update = %v, %v", next, err)
		}
		svc.Health.SetServingStatus("greeter", healthpb.HealthCheckResponse_SERVING)
	})

	t.Run("local reply is a gRPC status", func(t *testing.T) {
		watch, err := health.Watch(ctx, &healthpb.HealthCheckRequest{Service: "greeter"})
		if err == nil {
			_, err = watch.Recv()
		}
		if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "forbidden" {
			t.Fatalf("Watch without the key: %v, want PermissionDenied: forbidden", err)
		}
	})

	t.Run("reflection passes through", func(t *testing.T) {
		refl, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		refl.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
		resp, err := refl.Recv()
		if err != nil || len(resp.GetListServicesResponse().GetService()) == 0 {
			t.Fatalf("list services through sluice: %v, %v", resp, err)
		}
		refl.CloseSend()
	})

	t.Run("client deadline", func(t *testing.T) {
		wctx, wcancel := context.WithTimeout(keyed, 200*time.Millisecond)
		defer wcancel()
		watch, err := health.Watch(wctx, &healthpb.HealthCheckRequest{Service: "greeter"})
		if err == nil {
			watch.Recv() // the first update
			_, err = watch.Recv()
		}
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("Watch past its deadline: %v, want DeadlineExceeded", err)
		}
	})

	t.Run("plain HTTP/1.1 on the same port", func(t *testing.T) {
		resp, err := http.Get("http://" + addr + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 404 || string(b) != "this port serves gRPC\n" {
			t.Fatalf("GET / = %d %q", resp.StatusCode, b)
		}
	})
}
