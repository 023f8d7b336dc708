# sidstream image: workers, `sidstream serve`, the trainer CronJob (deploy/k8s/*.yaml use it).
#   podman build -t sidstream .                                             # CPU torch
#   podman build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 -t sidstream:cuda .
# TORCH_INDEX is where torch comes from: PyTorch's CPU index by default (no CUDA libraries), a CUDA
# index for GPU nodes, or "pypi" for PyPI's default wheel (which bundles the CUDA libraries: the
# only choice where PyTorch's index is unreachable). BASE: any Debian/Ubuntu with python3 >= 3.10,
# python3-venv and libsndfile1 (a local debootstrap base works where no registry is reachable).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PATH=/opt/venv/bin:$PATH
RUN (command -v apt-get >/dev/null && dpkg -s libsndfile1 >/dev/null 2>&1) || \
    (apt-get update && apt-get install -y --no-install-recommends libsndfile1 python3-venv && rm -rf /var/lib/apt/lists/*)
RUN python3 -m venv /opt/venv && pip install --upgrade pip
# every Python package at the version in deploy/requirements.lock (a local label such as +cpu
# satisfies the lock's torch pin)
COPY deploy/requirements.lock /tmp/requirements.lock
RUN if [ "$TORCH_INDEX" = "pypi" ]; then pip install -c /tmp/requirements.lock torch; \
    else pip install -c /tmp/requirements.lock torch --index-url "$TORCH_INDEX" --extra-index-url https://pypi.org/simple; fi
WORKDIR /app
# the packages, pyproject.toml and feature_repo/ (the Feast definitions, which open_store()
# materialises into SIDSTREAM_FEAST_ROOT); .dockerignore leaves out tests, docs, deploy, .venv
COPY . /app
# editable: the installed package finds feature_repo/ next to it (streams.sinks.feast.DEFINITIONS_DIR)
RUN pip install -c /tmp/requirements.lock -e . && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
    && useradd --uid 10001 --create-home sidstream && mkdir -p /var/lib/sidstream /var/cache/sidstream \
    && chown sidstream /var/lib/sidstream /var/cache/sidstream
USER sidstream
# numba's compiled kernels (trainer/fast_rank.py) are cached where the user may write
ENV NUMBA_CACHE_DIR=/var/cache/sidstream/numba
EXPOSE 16066
CMD ["sidstream", "serve", "--host", "0.0.0.0"]
