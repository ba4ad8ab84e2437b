#!/usr/bin/env bash
# deploy/build-image.sh: builds the exporter image for each architecture and,
# with podman, their manifest list; nothing is pulled. The binaries are
# built here with the host's Go (static: CGO_ENABLED=0), the image build
# only copies them and a CA bundle (deploy/Containerfile describes the build
# context).
#
#   deploy/build-image.sh [IMAGE]
#
# IMAGE (default localhost/verifierlog-exporter:$VERSION) names the
# manifest list; each architecture's image is IMAGE-ARCH (e.g.
# localhost/verifierlog-exporter:v1.2.0-arm64). Environment:
#   VERSION    the exporter's version (exporter --version, build_info) and
#              the default tag; default `git describe --tags --always
#              --dirty`, or "dev" outside a git checkout
#   ARCHES     default "amd64 arm64"
#   CONTEXT    the build context directory, emptied first (default bin/image
#              in the repository)
#   CA_BUNDLE  default /etc/ssl/certs/ca-certificates.crt
#   ENGINE     the container CLI with its global options (default podman,
#              else docker), e.g. "podman --storage-driver vfs --runtime runc"
#   PUSH       if set, a registry reference the manifest list is pushed to
#              (podman manifest push --all IMAGE docker://$PUSH)
#   CONTEXT_ONLY=1  build the context only (for a pipeline's own image build)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

log() { printf 'build-image: %s\n' "$*" >&2; }

if [ -z "${VERSION:-}" ]; then
	VERSION=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
fi
ARCHES=${ARCHES:-amd64 arm64}
ctx=${CONTEXT:-$root/bin/image}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
image=${1:-localhost/verifierlog-exporter:$VERSION}
if [ -z "${ENGINE:-}" ]; then
	if command -v podman >/dev/null; then ENGINE=podman; else ENGINE=docker; fi
fi
read -r -a engine <<<"$ENGINE"

[ -r "$CA_BUNDLE" ] || { log "no CA bundle at $CA_BUNDLE (Debian: apt-get install ca-certificates; or set CA_BUNDLE)"; exit 1; }

# ---------------------------------------------------------------- context
rm -rf "$ctx"
mkdir -p "$ctx"
cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"
chmod 0644 "$ctx/ca-certificates.crt"
for arch in $ARCHES; do
	start=$SECONDS
	mkdir -p "$ctx/$arch"
	# The one build line of the image; deploy/containerfile_test.go builds the
	# tests' binary with this line too.
	CGO_ENABLED=0 GOOS=linux GOARCH="$arch" go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" -o "$ctx/$arch/exporter" ./cmd/exporter
	log "$arch binary: $(stat -c %s "$ctx/$arch/exporter") bytes in $((SECONDS - start))s"
done
if [ "${CONTEXT_ONLY:-}" = 1 ]; then
	log "context ready in $ctx"
	exit 0
fi

# ---------------------------------------------------------------- images
# BuildKit finds deploy/Containerfile.dockerignore itself; podman is told.
ignore=()
case "${engine[0]}" in *podman* | *buildah*) ignore=(--ignorefile deploy/Containerfile.dockerignore) ;; esac
tags=()
for arch in $ARCHES; do
	start=$SECONDS
	"${engine[@]}" build --platform "linux/$arch" --build-arg "VERSION=$VERSION" \
		-f deploy/Containerfile "${ignore[@]}" -t "$image-$arch" "$ctx" >&2
	size=$("${engine[@]}" image inspect --format '{{.Size}}' "$image-$arch")
	log "$image-$arch: $size bytes, built in $((SECONDS - start))s"
	tags+=("$image-$arch")
done

case "${engine[0]}" in
*podman*)
	# A list of the same name would be amended, not replaced.
	"${engine[@]}" manifest rm "$image" >/dev/null 2>&1 || true
	"${engine[@]}" manifest create "$image" >/dev/null
	for t in "${tags[@]}"; do
		"${engine[@]}" manifest add "$image" "containers-storage:$t" >/dev/null
	done
	log "manifest list $image: ${tags[*]}"
	if [ -n "${PUSH:-}" ]; then
		"${engine[@]}" manifest push --all "$image" "docker://$PUSH"
		log "pushed $image to $PUSH"
	fi
	;;
*)
	# docker keeps no local manifest list; push the images and join them
	# with `docker manifest create`, or build and push in one go with
	# `docker buildx build --platform linux/amd64,linux/arm64 --push`.
	log "built ${tags[*]}; with docker, the manifest list is made when pushing (deploy/README.md)"
	if [ -n "${PUSH:-}" ]; then
		log "PUSH is supported with podman only"
		exit 1
	fi
	;;
esac
