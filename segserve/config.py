"""Settings: one pydantic-settings class, read from SEGSERVE_* environment variables.

Never read at import time: call `get_settings()` (cached) where a value is needed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_shared_models() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared" / "models"


class Settings(BaseSettings):
    """Service configuration. Every field maps to `SEGSERVE_<NAME>` (e.g. `SEGSERVE_DATA_DIR`)."""

    model_config = SettingsConfigDict(env_prefix="SEGSERVE_", extra="ignore")

    data_dir: Path = Field(
        default=Path("data"), description="Jobs, uploads, SQLite database, embedded broker."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/segserve.db."
    )
    redis_url: str | None = Field(
        default=None, description="Broker URL (redis:// or redis+socket://). Unset: `up` embeds one."
    )
    broker_key_prefix: str = Field(
        default="", description="Prefix for every broker key, so several deployments can share one Redis."
    )
    models_dir: Path | None = Field(default=None, description="Weights directory; default <data_dir>/models.")
    datasets_dir: Path | None = Field(
        default=None, description="Folders that evaluations may read; default <data_dir>/datasets."
    )
    max_upload_bytes: int = Field(default=2 * 1024**3, description="Largest accepted request body, bytes.")
    default_queue: str = Field(default="cpu", description="Queue that new jobs go to: cpu or gpu.")
    task_soft_time_limit_s: int = Field(default=3300, description="A job's soft time limit.")
    task_time_limit_s: int = Field(default=3600, description="A job's hard time limit (worker killed).")
    visibility_timeout_s: int = Field(
        default=4200, description="Broker re-delivers an unacknowledged job after this; > hard limit."
    )
    lease_s: int = Field(
        default=120, description="A running job whose worker stops renewing for this long is requeued."
    )
    recovery_interval_s: int = Field(default=30, description="How often a worker looks for abandoned jobs.")
    torch_threads: int | None = Field(default=None, description="torch intra-op threads in a worker.")
    device: str = Field(default="cpu", description="Torch device of a worker: cpu or cuda.")
    cpu_precision: Literal["auto", "fp32"] = Field(
        default="auto",
        description="CPU inference path: auto (bf16 on CPUs with avx512_bf16 or amx_bf16, for each "
        "model whose recorded calibration agrees with fp32 on >= 99.9 % of voxels; else fp32) or fp32.",
    )
    host: str = Field(default="127.0.0.1", description="API bind address for `segserve up` / `api`.")
    port: int = Field(default=8000, description="API port for `segserve up` / `api`.")
    shutdown_grace_s: int = Field(
        default=30,
        ge=0,
        description="On SIGTERM the API refuses new connections and lets requests in flight (uploads "
        "still streaming) finish for at most this long, then ends them with 503 `shutting_down`. Keep it "
        "below the orchestrator's kill deadline (compose stop_grace_period, terminationGracePeriodSeconds).",
    )
    log_level: str = Field(default="INFO")
    dicomweb_default_model: str | None = Field(
        default=None, description="Model for STOW-RS to /dicomweb/studies (no model in the path)."
    )
    dicomweb_model_rules: dict[str, str] = Field(
        default_factory=dict,
        description="Modality -> model for STOW-RS to /dicomweb/studies, as JSON (e.g. "
        '{"MR": "brain-mri-structures"}); other modalities take SEGSERVE_DICOMWEB_DEFAULT_MODEL.',
    )
    dicomweb_quiet_s: float = Field(
        default=45.0, gt=0, description="A received series becomes a job this long after its last instance."
    )
    dicomweb_sweep_interval_s: float = Field(
        default=5.0, gt=0, description="How often a worker looks for received series that have gone quiet."
    )
    dicomweb_push_url: str | None = Field(
        default=None, description="DICOMweb base URL a DICOM job's SEG is stored to (STOW-RS {url}/studies)."
    )
    dicomweb_push_token: str | None = Field(
        default=None, description="Sent as 'Authorization: Bearer <token>' with each push."
    )
    dicomweb_push_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one push.")
    min_free_disk_mb: int = Field(
        default=1024,
        ge=0,
        description="Free space (MiB) kept on the data directory's disk: an upload that would leave less "
        "is refused with 507, so accepted jobs still have room for their results. 0 turns the check off.",
    )
    metrics_token: str | None = Field(
        default=None,
        description="Bearer token that may read /metrics (besides admin API keys). Unset: admin keys only.",
    )
    idempotency_ttl_s: float = Field(
        default=86400.0,
        gt=0,
        description="How long an Idempotency-Key's answer is kept and replayed (per API key), seconds.",
    )
    idempotency_lock_s: float = Field(
        default=900.0,
        gt=0,
        description="A first request still in progress holds its Idempotency-Key at most this long, seconds; "
        "after that (its API process died) a retry may take the key over.",
    )
    max_queued_jobs_per_key: int | None = Field(
        default=None, ge=1, description="Queued jobs one API key may hold; more get 429. Unset: no limit."
    )
    rate_limit_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="POST /v1/jobs requests per API key in any 60 s (counted in Redis, so across API "
        "processes); more get 429. Unset: no limit.",
    )
    estimate_runs: int = Field(
        default=20, ge=1, description="Succeeded runs per model whose median duration estimates waits."
    )
    retention_days: float = Field(
        default=0.0,
        ge=0,
        description="Files of a finished job (succeeded, failed, cancelled) are deleted this many days after "
        "it finished; the job's row stays as a tombstone. 0 (the default): files are kept forever.",
    )
    retention_interval_s: float = Field(
        default=3600.0, gt=0, description="How often a worker looks for finished jobs past the retention."
    )
    deidentify: bool = Field(
        default=False, description="Store DICOM inputs de-identified (PS3.15 Basic Confidentiality Profile)."
    )
    worker_memory_mb: int | None = Field(
        default=None,
        ge=1,
        description="Memory a worker may use for one job, MiB. A job whose estimated peak is larger fails at "
        "once (code insufficient_worker_memory) instead of being killed; set on the API too, uploads no "
        "worker could take are refused with 422. Unset: workers use their cgroup's limit when there is one, "
        "the API checks nothing.",
    )

    interactive_ttl_s: float = Field(
        default=900.0,
        gt=0,
        description="An interaction session (semi-automatic segmentation) unused for this long expires: its "
        "prepared image is dropped from the interactive worker's memory and further calls answer 410.",
    )
    interactive_cache_mb: int = Field(
        default=2048,
        ge=1,
        description="Memory an interactive worker process keeps for prepared images of open sessions, MiB; "
        "the least recently used session is dropped first (it is prepared again at its next click).",
    )
    interactive_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="How long the API waits for an interactive worker's answer to one prompt before 503.",
    )

    @property
    def min_free_disk_bytes(self) -> int:
        return self.min_free_disk_mb * 2**20

    @property
    def retention_s(self) -> float | None:
        """The retention in seconds, or None when files are kept forever."""
        return self.retention_days * 86400.0 if self.retention_days > 0 else None

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.resolved_data_dir / 'segserve.db'}"

    @property
    def resolved_models_dir(self) -> Path:
        if self.models_dir is not None:
            return self.models_dir.expanduser().resolve()
        return self.resolved_data_dir / "models"

    @property
    def resolved_datasets_dir(self) -> Path:
        if self.datasets_dir is not None:
            return self.datasets_dir.expanduser().resolve()
        return self.resolved_data_dir / "datasets"

    @property
    def evaluations_dir(self) -> Path:
        return self.resolved_data_dir / "evaluations"

    @property
    def jobs_dir(self) -> Path:
        return self.resolved_data_dir / "jobs"

    @property
    def staging_dir(self) -> Path:
        return self.resolved_data_dir / "staging"

    @property
    def incoming_dir(self) -> Path:
        """DICOMweb (STOW-RS) instances collected per series until the series goes quiet."""
        return self.resolved_data_dir / "incoming"


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


def default_shared_models_dir() -> Path:
    """Where this checkout's sibling `shared/models` would be (a development convenience)."""
    return _default_shared_models()
