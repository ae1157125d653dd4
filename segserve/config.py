"""Settings: one pydantic-settings class, read from SEGSERVE_* environment variables.

Never read at import time: call `get_settings()` (cached) where a value is needed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

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
    host: str = Field(default="127.0.0.1", description="API bind address for `segserve up` / `api`.")
    port: int = Field(default=8000, description="API port for `segserve up` / `api`.")
    log_level: str = Field(default="INFO")

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


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()


def default_shared_models_dir() -> Path:
    """Where this checkout's sibling `shared/models` would be (a development convenience)."""
    return _default_shared_models()
