#!/usr/bin/env bash
# The whole test suite, as CI runs it: system packages, a build of every binary, lint, the
# dependency policy (cargo deny), and every test including the network-namespace end-to-end
# tests (root required; they fail, never skip, without it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root: the end-to-end tests need network namespaces, nftables and pcap" >&2; exit 77; }
bash deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# A clean build from scratch: incremental caches only cost disk here.
export CARGO_INCREMENTAL=0
cargo fmt --all -- --check
cargo build --workspace --bins --locked
cargo clippy --workspace --all-targets --locked -- -D warnings
# Licences, bans and sources of every dependency, per deny.toml, for the main workspace and
# the fuzz workspace (its own Cargo.lock). Advisories are NOT checked: the RustSec advisory
# database is fetched from GitHub, which CI cannot reach; on a machine that can, run
# `cargo deny --locked check advisories` (and with --manifest-path fuzz/Cargo.toml).
cargo deny --version >/dev/null 2>&1 || cargo install cargo-deny --locked --version 0.20.2
for manifest in Cargo.toml fuzz/Cargo.toml; do
  cargo deny --manifest-path "$manifest" --locked check licenses bans sources ||
    { echo "test.sh: FAILED: cargo deny found a licence, ban or source violation in $manifest (see deny.toml)" >&2; exit 1; }
done
bash scripts/fuzz-smoke.sh
# The sanitizer build of the fuzz workspace is not used again: give its disk back.
rm -rf fuzz/target
# The deploy artefacts, for real: the Debian packages installed on a Debian 12 host booted
# with systemd-nspawn (units verified and running), the Helm chart rendered by Helm's own
# library and validated against the Kubernetes schemas, and the Ansible role applied with
# molecule to another booted host. The debootstrap root is made once per run and cached in
# /var/cache/knockgate-test (KNOCKGATE_CACHE), never committed.
KNOCKGATE_BIN_DIR=target/debug bash deploy/test/debs.sh
bash deploy/helm/test.sh
bash deploy/ansible/test.sh
# The root-only suites (network namespaces, nftables, pcap, raw sockets) are marked
# #[ignore = "needs root ..."] so that `cargo test` as a developer runs everything else and
# passes; here, as root, they all run: none may be skipped.
cargo test --workspace --locked -- --include-ignored
# The fixed-sequence stories again with every sequence matched by the agent itself (the
# run above matches them in the kernel, the default): both paths are product paths.
KGT_SEQUENCES=userspace cargo test -p knockgate-tests --locked --test sequence --test failclosed -- --include-ignored
