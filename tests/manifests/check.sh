#!/bin/sh
# Renders and validates manifests/overlays/* (see check.py). Installs kubernetes-validate into
# .cache/tools/venv on first use (PyPI; idempotent). Needs kubectl (for `kubectl kustomize`).
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
venv=$repo/.cache/tools/venv
want=1.37.0
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$want"; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$want" "PyYAML>=6"
fi
exec "$venv/bin/python" "$repo/tests/manifests/check.py" "$venv/bin/kubernetes-validate"
