#!/usr/bin/env bash
# The lab demo: builds knockgate, creates a client and a gateway network namespace, runs
# the agent with a sample policy, knocks with knocker and shows the port open. Run as root.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (network namespaces, nftables, pcap)" >&2; exit 77; }
bash deploy/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --workspace --bins
exec ./target/release/kgt-lab
