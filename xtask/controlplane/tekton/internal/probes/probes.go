// Package probes answers the liveness and readiness probes of the local Tekton processes on
// 127.0.0.1:$PROBES_PORT, in place of knative's server on the fixed port 8080.
package probes

import (
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

// Serve answers /health and /readiness in the background; the process exits if it cannot.
func Serve() {
	addr := net.JoinHostPort("127.0.0.1", os.Getenv("PROBES_PORT"))
	ok := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }
	mux := http.NewServeMux()
	mux.HandleFunc("/health", ok)
	mux.HandleFunc("/readiness", ok)
	server := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { log.Fatal(server.ListenAndServe()) }()
}
