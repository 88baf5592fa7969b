#!/usr/bin/env bash
# Builds the Debian packages of knockgate into deploy/out/ (or --out DIR):
#
#   knockgate-agent       the agent, its systemd unit, an example config
#   knockgate-controller  the controller, its unit, /etc/knockgate/controller.env, the
#                         `knockgate` system user
#   knockgate-cli         knockadm and knocker
#
# each with its man pages and bash, zsh and fish completions, generated from the clap
# definitions (`cargo xtask docs`). By default it builds the release binaries first;
# KNOCKGATE_BIN_DIR=DIR packages the binaries already in DIR instead (the tests package
# the debug build). Packages are plain dpkg-deb archives: no cargo-deb needed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/deploy/out
compress=(-Zxz)
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$(realpath -m "$2"); shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;   # for tests: quick, bigger
    *) echo "usage: deploy/build-debs.sh [--out DIR] [--fast]" >&2; exit 64 ;;
  esac
done
export PATH="$HOME/.cargo/bin:$PATH"

if [ -n "${KNOCKGATE_BIN_DIR:-}" ]; then
  bin=$(realpath "$KNOCKGATE_BIN_DIR")
else
  cargo build --release --locked --bins -p knockgate-agent -p knockgate-controller -p knockgate-cli
  bin=$root/target/release
fi
for b in knockgate-agent knockgate-controller knockadm knocker; do
  [ -x "$bin/$b" ] || { echo "build-debs.sh: no $bin/$b: build it first" >&2; exit 1; }
done
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cargo xtask docs "$work/docs" >/dev/null

# stage PACKAGE BINARY...: binaries, their man pages and completions into $work/PACKAGE.
stage() {
  local pkg=$1 d=$work/$1
  shift
  install -d "$d/DEBIAN" "$d/usr/bin" "$d/usr/share/man/man1" "$d/usr/share/doc/$pkg" \
    "$d/usr/share/bash-completion/completions" "$d/usr/share/zsh/vendor-completions" \
    "$d/usr/share/fish/vendor_completions.d"
  for b in "$@"; do
    install -m 0755 "$bin/$b" "$d/usr/bin/$b"
    strip --strip-debug "$d/usr/bin/$b"
    for page in "$work/docs/man/$b.1" "$work/docs/man/$b-"*.1; do
      [ -e "$page" ] || continue
      gzip -9n <"$page" >"$d/usr/share/man/man1/$(basename "$page").gz"
    done
    install -m 0644 "$work/docs/completions/bash/$b.bash" "$d/usr/share/bash-completion/completions/$b"
    install -m 0644 "$work/docs/completions/zsh/_$b" "$d/usr/share/zsh/vendor-completions/_$b"
    install -m 0644 "$work/docs/completions/fish/$b.fish" "$d/usr/share/fish/vendor_completions.d/$b.fish"
  done
  install -m 0644 deploy/debian/copyright "$d/usr/share/doc/$pkg/copyright"
}

# control PACKAGE DEPENDS DESCRIPTION: the DEBIAN/control file.
control() {
  local d=$work/$1
  {
    echo "Package: $1"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: knockgate <knockgate@localhost>"
    echo "Section: net"
    echo "Priority: optional"
    echo "Depends: $2"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$d" | cut -f1)"
    echo "Description: $3"
    sed 's/^/ /' "deploy/debian/$1.description"
  } >"$d/DEBIAN/control"
}

stage knockgate-agent knockgate-agent
install -D -m 0644 deploy/systemd/knockgate-agent.service "$work/knockgate-agent/lib/systemd/system/knockgate-agent.service"
install -D -m 0644 deploy/debian/agent.toml "$work/knockgate-agent/usr/share/doc/knockgate-agent/examples/agent.toml"
install -m 0755 deploy/debian/knockgate-agent.postinst "$work/knockgate-agent/DEBIAN/postinst"
install -m 0755 deploy/debian/knockgate-agent.prerm "$work/knockgate-agent/DEBIAN/prerm"
install -m 0755 deploy/debian/knockgate-agent.postrm "$work/knockgate-agent/DEBIAN/postrm"
control knockgate-agent "libc6 (>= 2.36), libpcap0.8 (>= 1.10)" \
  "port-knocking and Single Packet Authorization gateway agent"

stage knockgate-controller knockgate-controller
install -D -m 0644 deploy/systemd/knockgate-controller.service "$work/knockgate-controller/lib/systemd/system/knockgate-controller.service"
install -D -m 0600 deploy/debian/controller.env "$work/knockgate-controller/etc/knockgate/controller.env"
echo /etc/knockgate/controller.env >"$work/knockgate-controller/DEBIAN/conffiles"
install -m 0755 deploy/debian/knockgate-controller.postinst "$work/knockgate-controller/DEBIAN/postinst"
install -m 0755 deploy/debian/knockgate-controller.prerm "$work/knockgate-controller/DEBIAN/prerm"
install -m 0755 deploy/debian/knockgate-controller.postrm "$work/knockgate-controller/DEBIAN/postrm"
control knockgate-controller "libc6 (>= 2.36), passwd" \
  "knockgate controller: users, keys, policies and audit for a fleet of agents"

stage knockgate-cli knockadm knocker
control knockgate-cli "libc6 (>= 2.36)" "knockgate command-line tools: knockadm and knocker"

mkdir -p "$out"
for pkg in knockgate-agent knockgate-controller knockgate-cli; do
  dpkg-deb --root-owner-group "${compress[@]}" --build "$work/$pkg" \
    "$out/${pkg}_${version}_${arch}.deb" >/dev/null
  echo "$out/${pkg}_${version}_${arch}.deb"
done
