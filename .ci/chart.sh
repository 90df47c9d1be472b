#!/usr/bin/env bash
# Checks the Helm chart: renders it with Helm's own engine with no values
# (SQLite), with a Postgres URL alone and with each ci/ values file, runs
# `helm lint --strict`, validates every manifest against the Kubernetes
# schemas, asserts what the chart promises, and makes sure the broken values in
# .ci/chart/ are refused. No cluster, no helm binary: Helm comes as a Python
# package. Run from the repository's top.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "chart: needs Python 3.10 or later ($python is $("$python" --version 2>&1))" >&2
    exit 1
fi

requirements=.ci/chart-requirements.txt
venv="${TMPDIR:-/tmp}/label-studio-identity-chart-venv"
stamp="$venv/.requirements-sha256"
wanted="$(sha256sum "$requirements" | cut -d' ' -f1)"

# The venv is kept between runs and rebuilt when the pins change.
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"
    echo "$wanted" >"$stamp"
fi

exec "$venv/bin/python" .ci/chart_check.py
