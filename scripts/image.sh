#!/usr/bin/env bash
# Builds the twtr image (Dockerfile) and pushes it to $TWTR_IMAGE_REPO, tagged from git.
#
#   TWTR_IMAGE_REPO=europe-west1-docker.pkg.dev/PROJECT/twtr/twtr scripts/image.sh
#   TWTR_IMAGE_REPO=twtr scripts/image.sh --no-push     # build into the local Docker only
#
# The tag is `git describe --tags --always --dirty` (v0.1.0, v0.1.0-3-gabc1234, abc1234-dirty),
# or $TWTR_IMAGE_TAG. A -dirty tag holds uncommitted changes: fine for a test cluster, never for
# production. The platform is linux/amd64 (GKE's default nodes) unless $TWTR_IMAGE_PLATFORM says
# otherwise. For Artifact Registry, run `gcloud auth configure-docker REGION-docker.pkg.dev`
# once. Prints the image reference last (scripts/deploy.sh --image takes it).
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
platform="${TWTR_IMAGE_PLATFORM:-linux/amd64}"
image="$repo:$tag"

if [[ "$tag" == *-dirty ]]; then
    echo "image.sh: warning: the work tree has uncommitted changes; tagging $tag" >&2
fi

if ((push)); then
    output=--push
else
    output=--load
fi
echo "image.sh: building $image for $platform" >&2
docker buildx build --platform "$platform" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD)" \
    --label "org.opencontainers.image.version=$tag" \
    --tag "$image" "$output" .
docker image inspect "$image" --format 'image.sh: {{.Size}} bytes uncompressed' >&2 2>/dev/null || true
echo "$image"
