// Command wait-healthy polls a gRPC server's standard health service (grpc.health.v1, which
// needs no token) until it answers SERVING, or gives up after -timeout.
//
//	wait-healthy -addr 127.0.0.1:50051 -timeout 30s
//
// Exit status: 0 when SERVING, 1 otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "the server's host:port")
	service := flag.String("service", "", "the service name to ask about (empty: the whole server)")
	timeout := flag.Duration("timeout", 30*time.Second, "how long to keep trying")
	flag.Parse()

	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "wait-healthy: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	client := healthpb.NewHealthClient(conn)

	deadline := time.Now().Add(*timeout)
	last := "no answer yet"
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: *service})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			fmt.Printf("wait-healthy: %s is SERVING\n", *addr)
			return
		}
		if err != nil {
			last = err.Error()
		} else {
			last = resp.GetStatus().String()
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "wait-healthy: %s not SERVING after %s (last: %s)\n", *addr, *timeout, last)
	os.Exit(1)
}
