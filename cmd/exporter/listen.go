package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/mdlayher/vsock"
	"github.com/prometheus/exporter-toolkit/web"
)

// listen checks the web config and opens every listener the flags name,
// as exporter-toolkit's web.ListenAndServe would, but before anything is
// attached: serve binds first, so that a port in use, an invalid address
// or a broken --web.config.file ends it at start instead of leaving a
// tracer running that nobody can scrape. On error nothing stays open.
func listen(flags *web.FlagConfig) ([]net.Listener, error) {
	if err := web.Validate(*flags.WebConfigFile); err != nil {
		return nil, fmt.Errorf("--web.config.file=%s: %w", *flags.WebConfigFile, err)
	}
	if *flags.WebSystemdSocket {
		all, err := activation.Listeners()
		if err != nil {
			return nil, fmt.Errorf("--web.systemd-socket: %w", err)
		}
		var ls []net.Listener
		for _, l := range all {
			if l != nil { // a passed descriptor that is not a listening socket
				ls = append(ls, l)
			}
		}
		if len(ls) == 0 {
			return nil, errors.New("--web.systemd-socket: no listening socket passed (LISTEN_PID, LISTEN_FDS)")
		}
		return ls, nil
	}
	if len(*flags.WebListenAddresses) == 0 {
		return nil, errors.New("no --web.listen-address")
	}
	var ls []net.Listener
	for _, addr := range *flags.WebListenAddresses {
		l, err := listenOn(addr)
		if err != nil {
			closeListeners(ls)
			return nil, err
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// listenOn listens on one --web.listen-address: vsock://:PORT, or TCP.
func listenOn(addr string) (net.Listener, error) {
	if !strings.HasPrefix(addr, "vsock://") {
		return net.Listen("tcp", addr) // its error names the address
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	_, portStr, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: invalid port %q", addr, portStr)
	}
	l, err := vsock.Listen(uint32(port), nil)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return l, nil
}

func closeListeners(ls []net.Listener) {
	for _, l := range ls {
		_ = l.Close()
	}
}
