#!/usr/bin/env bash
# Refreshes the Swagger UI files the gateway serves at /docs (gateway/assets/swagger-ui/) from the
# npm package swagger-ui-dist. They are committed and compiled into the binary, so /docs works
# offline; nothing is downloaded at build time. Usage: scripts/vendor-swagger-ui.sh [version]
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-5}"
dest=gateway/assets/swagger-ui
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "swagger-ui-dist@$version" >/dev/null && tar xzf swagger-ui-dist-*.tgz)
resolved=$(sed -nE 's/.*"version": *"([^"]+)".*/\1/p' "$work/package/package.json" | head -1)
mkdir -p "$dest"
cp "$work"/package/{swagger-ui-bundle.js,swagger-ui.css,LICENSE,NOTICE} "$dest/"
echo "swagger-ui-dist $resolved (npm), unmodified; refresh with scripts/vendor-swagger-ui.sh" > "$dest/VERSION"
echo "vendored swagger-ui-dist $resolved into $dest"
