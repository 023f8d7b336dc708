#!/usr/bin/env bash
# One-time set-up on a fresh Debian/Ubuntu machine (root or sudo): system packages only
# where missing, a virtual environment in .venv, the project with its dev tools, and the
# Kafka broker jars (resolved by Maven into ~/.cache/sidstream, outside the clone). Python
# packages come at the versions in deploy/requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v hey >/dev/null 2>&1 || need+=(hey)   # the HTTP load generator of `sidstream bench online`
[ -d /usr/share/games/singularity/music ] || need+=(singularity-music)
python3 -c "import venv" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# old pip backtracks on feast for many minutes: upgrade it first
.venv/bin/python -m pip install -q --upgrade pip
# exact versions from deploy/requirements.lock (refresh: bash deploy/lock.sh), checked after install
.venv/bin/python -m pip install -q -c deploy/requirements.lock -e ".[dev]"
.venv/bin/python deploy/check_lock.py

# Kafka 3.9.x broker jars via Maven (cached; a no-op once resolved)
.venv/bin/python -c "from sidcore.config import get_settings; from streams.admin.broker import local_broker; print('kafka jars:', local_broker(get_settings()).resolve_jars())"
echo "setup: done"
