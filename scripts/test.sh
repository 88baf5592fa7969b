#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages, a build of every binary, lint,
# and every test including the network-namespace end-to-end tests (root required; they
# fail, never skip, without it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root: the end-to-end tests need network namespaces, nftables and pcap" >&2; exit 77; }
bash deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo build --workspace --bins --locked
cargo clippy --workspace --all-targets --locked -- -D warnings
bash scripts/fuzz-smoke.sh
cargo test --workspace --locked
