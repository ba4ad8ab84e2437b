package bench

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/verifierlog/exporter/internal/backends"
)

// CollectorProcess is an OpenTelemetry Collector that the storm's OTLP push
// goes to: backends.CollectorConfig's receivers and file exporters, in a
// directory of its own.
type CollectorProcess struct {
	GRPCAddr, HTTPAddr string // host:port
	cmd                *exec.Cmd
	done               chan struct{}
}

// StartCollector runs the Collector (backends.CollectorBinary) with its
// configuration, output and log in dir, and waits until both receivers
// accept connections.
func StartCollector(dir string) (*CollectorProcess, error) {
	bin, err := backends.CollectorBinary()
	if err != nil {
		return nil, err
	}
	c := &CollectorProcess{done: make(chan struct{})}
	if c.GRPCAddr, err = backends.FreeAddr(); err != nil {
		return nil, err
	}
	if c.HTTPAddr, err = backends.FreeAddr(); err != nil {
		return nil, err
	}
	config := filepath.Join(dir, "otelcol.yaml")
	if err := os.WriteFile(config, backends.CollectorConfig(c.GRPCAddr, c.HTTPAddr, dir), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "otelcol.log"))
	if err != nil {
		return nil, err
	}
	c.cmd = exec.Command(bin, "--config="+config)
	c.cmd.Dir, c.cmd.Stdout, c.cmd.Stderr = dir, logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("otelcol: %w", err)
	}
	go func() { _ = c.cmd.Wait(); logf.Close(); close(c.done) }()
	if err := backends.WaitReady(60*time.Second, c.done, func() error {
		for _, addr := range []string{c.GRPCAddr, c.HTTPAddr} {
			conn, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return err
			}
			conn.Close()
		}
		return nil
	}); err != nil {
		c.Stop()
		return nil, fmt.Errorf("otelcol (log in %s): %w", dir, err)
	}
	return c, nil
}

// OTLPEnv is the exporter's environment that pushes spans and metrics to c
// over gRPC, with the metric push every interval (the SDK's default is 60 s,
// longer than a storm).
func (c *CollectorProcess) OTLPEnv(interval time.Duration) []string {
	return []string{
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_METRICS_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + c.GRPCAddr,
		fmt.Sprintf("OTEL_METRIC_EXPORT_INTERVAL=%d", interval.Milliseconds()),
	}
}

// Stop kills the Collector and waits for it to exit.
func (c *CollectorProcess) Stop() {
	_ = c.cmd.Process.Kill()
	<-c.done
}
