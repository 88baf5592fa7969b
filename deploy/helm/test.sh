#!/usr/bin/env bash
# Tests the knockgate-controller Helm chart without a helm binary or a cluster:
# Helm's own linter and renderer (helm-python-sdk, the Helm v4 SDK) and the Kubernetes
# API schemas (kubernetes-validate --strict), for the chart's defaults and both examples.
# See check_chart.py for every check.
#
#   bash deploy/helm/test.sh
#
# Env: KNOCKGATE_CACHE (default /var/cache/knockgate-test) holds the venv, reused while
# requirements.txt and the Python are unchanged; PYTHON (default python3, >= 3.10);
# KUBE_VERSIONS (default "1.25.0 1.33.0": the chart's kubeVersion floor and a current
# release); KNOCKGATE_HELM_OUT keeps the rendered manifests in that directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start=$(date +%s)
cache=${KNOCKGATE_CACHE:-/var/cache/knockgate-test}
venv=$cache/helm-venv
python=${PYTHON:-python3}
read -r -a kube_versions <<<"${KUBE_VERSIONS:-1.25.0 1.33.0}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "test.sh: $python is $("$python" -V 2>&1); helm-python-sdk needs Python >= 3.10" >&2
    exit 1
fi

# The venv, keyed by requirements.txt and the interpreter.
stamp="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version)' | head -n1)"
if [[ ! -f $venv/.stamp || "$(cat "$venv/.stamp")" != "$stamp" ]]; then
    echo "test.sh: installing the tools into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        -r "$here/requirements.txt"
    printf '%s' "$stamp" >"$venv/.stamp"
else
    echo "test.sh: reusing $venv"
fi

if [[ -n ${KNOCKGATE_HELM_OUT:-} ]]; then
    out=$KNOCKGATE_HELM_OUT
    rm -rf "$out"
    mkdir -p "$out"
else
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi

rc=0
"$venv/bin/python" "$here/check_chart.py" \
    "$here/knockgate-controller" "$here/examples" "$out" "${kube_versions[@]}" || rc=$?

elapsed=$(($(date +%s) - start))
if ((rc == 0)); then
    echo "test.sh: OK: chart linted, rendered (defaults, examples/sqlite.yaml, examples/postgresql.yaml), validated strictly against Kubernetes ${kube_versions[*]} and checked, in ${elapsed}s"
else
    echo "test.sh: FAILED (exit $rc) after ${elapsed}s" >&2
fi
exit "$rc"
