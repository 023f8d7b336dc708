# sidstream image: workers, `sidstream serve`, the trainer CronJob (deploy/k8s/*.yaml use it).
#   podman build -t sidstream .                          # CPU
#   podman build --build-arg TORCH_INDEX=cu124 -t sidstream:cuda .   # CUDA wheels of torch
# TORCH_INDEX=cpu installs torch from PyTorch's CPU wheel index (no CUDA libraries: about 1.5 GB
# less than PyPI's default torch, which bundles CUDA); cu124 the CUDA 12.4 build.
ARG PYTHON=3.11
FROM python:${PYTHON}-slim-bookworm
ARG TORCH_INDEX=cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sidcore sidcore
COPY psrq psrq
COPY encoders encoders
COPY streams streams
COPY trainer trainer
COPY sidstream sidstream
# the Feast definitions: open_store() materialises them into SIDSTREAM_FEAST_ROOT
COPY feature_repo feature_repo
RUN pip install --upgrade pip \
    && pip install torch --index-url https://download.pytorch.org/whl/${TORCH_INDEX} \
    && pip install -e .   # editable: the package finds feature_repo/ next to it (streams.sinks.feast.DEFINITIONS_DIR)
RUN useradd --uid 10001 --create-home sidstream && mkdir -p /var/lib/sidstream /var/cache/sidstream \
    && chown sidstream /var/lib/sidstream /var/cache/sidstream
USER sidstream
EXPOSE 16066
ENTRYPOINT []
CMD ["sidstream", "serve", "--host", "0.0.0.0"]
