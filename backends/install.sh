#!/usr/bin/env bash
# Installs the real back-ends that the end-to-end tests run against
# (see internal/backends):
#   - Prometheus and promtool from Debian's "prometheus" package (2.42 on
#     Debian 12);
#   - an OpenTelemetry Collector v0.165.0 built with the collector builder
#     (ocb) from core components plus contrib's file exporter, into
#     ${VERIFIERLOG_BACKENDS:-/var/cache/verifierlog-backends}/otelcol-0.165.0/otelcol;
#   - podman and runc (Debian 12: podman 4.3), which deploy/image_test.go
#     builds and runs the image with, and qemu-user-static, which runs its
#     arm64 image;
#   - helm v4.3.2, built with go install into
#     ${VERIFIERLOG_BACKENDS:-/var/cache/verifierlog-backends}/helm-v4.3.2/helm.
# Idempotent: each step is skipped when its result is already in place.
set -euo pipefail

OTELCOL_VERSION=0.165.0     # collector core (v0) modules, the builder, contrib's fileexporter
OTELCOL_STABLE=1.71.0       # the stable (v1) core modules released with it
CACHE=${VERIFIERLOG_BACKENDS:-/var/cache/verifierlog-backends}
OTELCOL_DIR=$CACHE/otelcol-$OTELCOL_VERSION
OTELCOL=$OTELCOL_DIR/otelcol
HELM_VERSION=v4.3.2
HELM_DIR=$CACHE/helm-$HELM_VERSION
HELM=$HELM_DIR/helm

log() { printf 'backends: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
# own_dir makes directory $1, ours even where only root may create it.
own_dir() {
	mkdir -p "$1" 2>/dev/null && return
	as_root mkdir -p "$1"
	as_root chown "$(id -u):$(id -g)" "$1"
}

# ---------------------------------------------------------------- Prometheus
install_prometheus() {
	if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
		log "prometheus: already installed"
		return
	fi
	local start=$SECONDS
	export DEBIAN_FRONTEND=noninteractive
	# The package would start its own service (prometheus on :9090). Without
	# systemd, invoke-rc.d asks policy-rc.d; make it say no for the duration
	# of the install unless the machine already has a policy of its own.
	local policy=/usr/sbin/policy-rc.d added_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
		as_root chmod 755 "$policy"
		added_policy=1
	fi
	local apt=(apt-get install -y --no-install-recommends prometheus)
	local ok=
	if compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null && as_root "${apt[@]}"; then
		ok=1
	else
		log "prometheus: install failed or no apt lists; running apt-get update"
		as_root apt-get update
		as_root "${apt[@]}" && ok=1
	fi
	if [ -n "$added_policy" ]; then as_root rm -f "$policy"; fi
	[ -n "$ok" ] || { log "prometheus: apt-get install failed"; exit 1; }
	log "prometheus: installed in $((SECONDS - start))s"
}

# If the package's service did start anyway (a machine with systemd or no
# policy-rc.d), stop it: tests pick free ports, but nothing should be left
# listening on :9090 on their behalf.
stop_package_service() {
	if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
		as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
	fi
	local pids
	pids=$(pgrep -u prometheus -x prometheus 2>/dev/null || true)
	if [ -n "$pids" ]; then
		log "prometheus: stopping the package's own prometheus (pid $pids)"
		# shellcheck disable=SC2086
		as_root kill $pids || true
	fi
}

# ------------------------------------------------- podman, runc, qemu-user
# crun, podman's preferred runtime, refuses some hosts' hybrid cgroup
# layouts; the tests run podman with --runtime runc.
install_container_tools() {
	if command -v podman >/dev/null && command -v runc >/dev/null && command -v qemu-aarch64-static >/dev/null; then
		log "podman, runc, qemu-user-static: already installed"
		return
	fi
	local start=$SECONDS
	export DEBIAN_FRONTEND=noninteractive
	local apt=(apt-get install -y --no-install-recommends podman runc qemu-user-static)
	if ! { compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null && as_root "${apt[@]}"; }; then
		log "podman: install failed or no apt lists; running apt-get update"
		as_root apt-get update
		as_root "${apt[@]}" || { log "podman, runc, qemu-user-static: apt-get install failed"; exit 1; }
	fi
	log "podman, runc, qemu-user-static: installed in $((SECONDS - start))s"
}

# ---------------------------------------------------------------- helm
install_helm() {
	if [ -x "$HELM" ]; then
		log "helm: already built at $HELM"
		return
	fi
	command -v go >/dev/null || { log "helm: go is not on PATH"; exit 1; }
	own_dir "$HELM_DIR"
	local start=$SECONDS
	# Unoptimised (-N -l): the tests run helm a few dozen times, so its
	# build is what costs; the line below logs how long it took.
	GOBIN=$HELM_DIR go install -trimpath -gcflags=all='-N -l' -ldflags='-s -w' "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
	log "helm: built in $((SECONDS - start))s"
}

# --------------------------------------------------------- OTel Collector
manifest() {
	cat <<YAML
dist:
  module: github.com/verifierlog/exporter/otelcol
  name: otelcol
  description: OpenTelemetry Collector for verifierlog end-to-end tests
  version: $OTELCOL_VERSION
  output_path: $OTELCOL_DIR/build

receivers:
  - gomod: go.opentelemetry.io/collector/receiver/otlpreceiver v$OTELCOL_VERSION
exporters:
  - gomod: go.opentelemetry.io/collector/exporter/debugexporter v$OTELCOL_VERSION
  - gomod: github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter v$OTELCOL_VERSION
  - gomod: go.opentelemetry.io/collector/exporter/otlpexporter v$OTELCOL_VERSION
  - gomod: go.opentelemetry.io/collector/exporter/otlphttpexporter v$OTELCOL_VERSION
processors:
  - gomod: go.opentelemetry.io/collector/processor/batchprocessor v$OTELCOL_VERSION
providers:
  - gomod: go.opentelemetry.io/collector/confmap/provider/envprovider v$OTELCOL_STABLE
  - gomod: go.opentelemetry.io/collector/confmap/provider/fileprovider v$OTELCOL_STABLE
  - gomod: go.opentelemetry.io/collector/confmap/provider/yamlprovider v$OTELCOL_STABLE
YAML
}

build_collector() {
	local want
	want=$(manifest)
	if [ -x "$OTELCOL" ] && [ "$(cat "$OTELCOL_DIR/manifest.yaml" 2>/dev/null)" = "$want" ]; then
		log "otelcol: already built at $OTELCOL"
		return
	fi
	command -v go >/dev/null || { log "otelcol: go is not on PATH"; exit 1; }
	own_dir "$OTELCOL_DIR"
	rm -rf "$OTELCOL_DIR/build"
	printf '%s\n' "$want" >"$OTELCOL_DIR/manifest.yaml.new"

	local start=$SECONDS builder=$OTELCOL_DIR/ocb
	if [ ! -x "$builder" ]; then
		GOBIN=$OTELCOL_DIR go install "go.opentelemetry.io/collector/cmd/builder@v$OTELCOL_VERSION"
		mv "$OTELCOL_DIR/builder" "$builder"
		log "otelcol: builder installed in $((SECONDS - start))s"
	fi
	start=$SECONDS
	# ocb runs "go mod tidy", which also resolves the imports of the
	# dependencies' own tests; fileexporter's tests import contrib's
	# otlpencodingextension, whose zip the module proxy refuses (403). -e
	# (picked up from GOFLAGS by "go mod tidy" only) lets tidy go on; the
	# collector itself does not import it, and "go build" still fails on a
	# module that really is missing.
	GOFLAGS="-e=true ${GOFLAGS:-}" "$builder" --config="$OTELCOL_DIR/manifest.yaml.new"
	mv "$OTELCOL_DIR/build/otelcol" "$OTELCOL.new"
	mv "$OTELCOL.new" "$OTELCOL"
	mv "$OTELCOL_DIR/manifest.yaml.new" "$OTELCOL_DIR/manifest.yaml"
	log "otelcol: built in $((SECONDS - start))s"
}

total=$SECONDS
# helm builds for minutes; it needs only Go, so it builds while the apt
# installs wait on the network.
install_helm &
helm_pid=$!
install_prometheus
stop_package_service
install_container_tools
build_collector
wait "$helm_pid" || { log "helm: build failed"; exit 1; }

echo "prometheus: $(command -v prometheus) ($(prometheus --version 2>&1 | head -n1))"
echo "promtool:   $(command -v promtool) ($(promtool --version 2>&1 | head -n1))"
echo "otelcol:    $OTELCOL ($("$OTELCOL" --version 2>&1 | head -n1))"
echo "podman:     $(command -v podman) ($(podman --version 2>&1 | head -n1)); runc $(runc --version 2>&1 | head -n1)"
echo "qemu:       $(command -v qemu-aarch64-static) ($(qemu-aarch64-static --version 2>&1 | head -n1))"
echo "helm:       $HELM ($("$HELM" version --short 2>&1 | head -n1))"
log "done in $((SECONDS - total))s"
