#!/usr/bin/env bash
# System packages knockgate needs to build, run and test on Debian 12 (run as root).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# postgresql: the throwaway PostgreSQL of the controller's and the fleet's tests (initdb and
# pg_ctl under /usr/lib/postgresql/15/bin); its cluster service is never started.
# debootstrap, systemd-container, python3-venv: the deploy tests (a Debian 12 root booted
# with systemd-nspawn for the packages and the Ansible role; Python venvs for Ansible and
# the Helm chart's renderer). p0f: its signature database, /etc/p0f/p0f.fp, which the agent
# reads for `require_os` (the p0f daemon is not used). openssh-client, openssh-server: the
# real ssh and sshd of the `knocker proxy` ProxyCommand test (tests/tests/proxy.rs runs its own
# sshd in a namespace; the host's ssh service is disabled below when this script installed it).
pkgs=(libpcap-dev pkg-config nftables iproute2 knockd fwknop-client postgresql ca-certificates curl
  debootstrap systemd-container python3-venv p0f openssh-client openssh-server)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get update -qq
  # knockd's and fwknop's daemons are not wanted: only their clients are used.
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # An sshd listening on the host is not wanted either; one already there is left alone.
  if [[ " ${missing[*]} " == *" openssh-server "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
  fi
fi
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "cargo is in ~/.cargo/bin: add it to PATH" >&2
  else
    echo "installing the Rust toolchain with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
  fi
fi
