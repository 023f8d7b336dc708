#!/usr/bin/env bash
# Refresh deploy/requirements.lock: the exact version of every Python dependency, resolved by uv
# from pyproject.toml's ranges (the project and its [dev] extra) for every Python >= 3.10 and
# platform (`--universal`: one file, environment markers where versions differ). setup.sh, .ci/run
# and the Dockerfile install through it. A refreshed lock lands only with a green CI run.
#   bash deploy/lock.sh                      # newest versions within the ranges
#   bash deploy/lock.sh --upgrade-package feast   # extra arguments go to `uv pip compile`
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
PY=${PYTHON:-python3}
tools="${XDG_CACHE_HOME:-$HOME/.cache}/sidstream/lock-tools"
if ! "$tools/bin/uv" --version 2>/dev/null | grep -q " $UV_VERSION"; then
  "$PY" -m venv "$tools"
  "$tools/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
# uv reads no pip.conf: take the system's CA bundle where there is one (TLS-inspecting proxies)
if [ -z "${SSL_CERT_FILE:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
fi
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--upgrade)
"$tools/bin/uv" pip compile pyproject.toml --extra dev --universal --python-version 3.10 \
  --custom-compile-command "bash deploy/lock.sh" -o deploy/requirements.lock "${args[@]}"
echo "lock: deploy/requirements.lock refreshed; run bash deploy/setup.sh and the tests before it lands"
