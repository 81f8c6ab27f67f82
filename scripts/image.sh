#!/usr/bin/env bash
# Builds the twtr image (Dockerfile) and pushes it to $TWTR_IMAGE_REPO, tagged from git.
#
#   TWTR_IMAGE_REPO=europe-west1-docker.pkg.dev/PROJECT/twtr/twtr scripts/image.sh
#   TWTR_IMAGE_REPO=twtr scripts/image.sh --no-push     # build into the local Docker only
#
# The tag is `git describe --tags --always --dirty` (v0.1.0, v0.1.0-3-gabc1234, abc1234-dirty),
# or $TWTR_IMAGE_TAG. A -dirty tag holds uncommitted changes: fine for a test cluster, never for
# production. For Artifact Registry, run `gcloud auth configure-docker REGION-docker.pkg.dev`
# once. Prints the image reference last, with the digest the registry gave it when pushed
# (repository:tag@sha256:...; scripts/deploy.sh --image takes it and deploys by digest).
#
# Platform: $TWTR_IMAGE_PLATFORM, else the Docker engine's own (`docker info`), so the Rust
# build runs natively; building another architecture runs the compiler under QEMU emulation,
# which takes a very long time. The image must match the nodes: GKE's default nodes are
# linux/amd64, so from an arm64 machine (Apple silicon) either set TWTR_IMAGE_PLATFORM=linux/amd64
# and wait, build on an amd64 machine or in Cloud Build, or run arm64 nodes (C4A, T2A).
#
# Base images: $TWTR_RUST_IMAGE and $TWTR_RUNTIME_IMAGE, when set, replace the Dockerfile's
# (e.g. rust:1.95-bookworm@sha256:..., to pin them by digest; see the Dockerfile).
#
# Needs Docker with buildx (BuildKit). Not run on the project's machines: they have no Docker
# engine.
set -euo pipefail
cd "$(dirname "$0")/.."

push=1
case "${1:-}" in
    --no-push) push=0 ;;
    "") ;;
    *)
        echo "usage: TWTR_IMAGE_REPO=... scripts/image.sh [--no-push]" >&2
        exit 2
        ;;
esac

repo="${TWTR_IMAGE_REPO:?set TWTR_IMAGE_REPO to the image repository, e.g. europe-west1-docker.pkg.dev/PROJECT/twtr/twtr}"
tag="${TWTR_IMAGE_TAG:-$(git describe --tags --always --dirty)}"
image="$repo:$tag"

# The engine's platform, as Docker names it (x86_64 -> amd64, aarch64 -> arm64).
host_platform() {
    local os arch
    os="$(docker info --format '{{.OSType}}' 2>/dev/null || echo linux)"
    arch="$(docker info --format '{{.Architecture}}' 2>/dev/null || uname -m)"
    case "$arch" in
        x86_64 | amd64) arch=amd64 ;;
        aarch64 | arm64) arch=arm64 ;;
    esac
    echo "$os/$arch"
}
platform="${TWTR_IMAGE_PLATFORM:-$(host_platform)}"
if [[ "$platform" != *linux/amd64* ]]; then
    echo "image.sh: note: building for $platform; GKE's default nodes are linux/amd64 (set TWTR_IMAGE_PLATFORM=linux/amd64 for them, or run $platform nodes)" >&2
fi

build_args=()
[[ -z "${TWTR_RUST_IMAGE:-}" ]] || build_args+=(--build-arg "RUST_IMAGE=$TWTR_RUST_IMAGE")
[[ -z "${TWTR_RUNTIME_IMAGE:-}" ]] || build_args+=(--build-arg "RUNTIME_IMAGE=$TWTR_RUNTIME_IMAGE")

if [[ "$tag" == *-dirty ]]; then
    echo "image.sh: warning: the work tree has uncommitted changes; tagging $tag" >&2
fi

if ((push)); then
    output=--push
else
    output=--load
fi
echo "image.sh: building $image for $platform" >&2
metadata="$(mktemp)"
trap 'rm -f "$metadata"' EXIT
docker buildx build --platform "$platform" ${build_args[@]+"${build_args[@]}"} \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD)" \
    --label "org.opencontainers.image.version=$tag" \
    --metadata-file "$metadata" \
    --tag "$image" "$output" .
docker image inspect "$image" --format 'image.sh: {{.Size}} bytes uncompressed' >&2 2>/dev/null || true
# The digest the registry knows the pushed image by (none for a local --load).
digest="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("containerimage.digest", ""))' "$metadata" 2>/dev/null || true)"
if ((push)) && [[ "$digest" == sha256:* ]]; then
    echo "$image@$digest"
else
    echo "$image"
fi
