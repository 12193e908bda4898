// Package greeter is the gRPC service of the samples/grpc example: the
// standard gRPC health service (unary Check, server-streaming Watch) and
// server reflection, so any gRPC client (grpcurl, grpc_health_probe, a
// generated stub) can call it through sluice without compiling a proto.
package greeter

import (
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
)

// Server is the sample service.
type Server struct {
	*grpc.Server
	Health *health.Server
}

// New builds the service: "" (the whole server) and "greeter" report
// SERVING.
func New() *Server {
	s := &Server{Server: grpc.NewServer(), Health: health.NewServer()}
	s.Health.SetServingStatus("greeter", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s.Server, s.Health)
	reflection.Register(s.Server)
	return s
}

// Serve serves gRPC over h2c on lis until Stop.
func (s *Server) Serve(lis net.Listener) error { return s.Server.Serve(lis) }
