#!/bin/bash
# VictoriaMetrics for the telemetry tests, fetched once into the test cache and printed as
# the path of its binary. Debian 12's own package (1.79) has no OTLP ingestion, so the
# trixie package is downloaded with a private apt state (the system's sources are not
# touched) and unpacked; it runs on bookworm's libraries.
set -euo pipefail

cache=${KNOCKGATE_TEST_CACHE:-/var/cache/knockgate-test}/victoria-metrics
bin=$cache/root/usr/bin/victoria-metrics
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
state=$(mktemp -d)
trap 'rm -rf "$state"' EXIT
mkdir -p "$state/lists/partial" "$state/archives/partial" "$cache"
cat > "$state/trixie.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
apt_opts=(-o "Dir::Etc::SourceList=$state/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$state/lists" -o "Dir::Cache::Archives=$state/archives"
  -o Debug::NoLocking=1)
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$state" && apt-get "${apt_opts[@]}" download victoria-metrics >&2)
rm -rf "$cache/root"
dpkg -x "$state"/victoria-metrics_*.deb "$cache/root"
test -x "$bin"
echo "$bin"
