"""Every setting of the service, read from ``KOINONIA_*`` environment variables.

This module is the only place that reads the environment. ``app/README.md`` documents each
variable (type, default, meaning); keep the two in step.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "KOINONIA_"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def url_origin(url: str) -> str | None:
    """The origin (``scheme://host[:port]``) of a URL as browsers send it in ``Origin``:
    lower case, default port left out. ``None`` when the URL has no scheme or host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not scheme or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host += f":{port}"
    return f"{scheme}://{host}"


class SettingsError(RuntimeError):
    """The environment does not describe a runnable service; the message names the setting."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=None,
        extra="ignore",
        frozen=True,
    )

    # --- required -------------------------------------------------------------------------
    database_url: SecretStr = Field(
        description="PostgreSQL URL the app uses, normally PgBouncer "
        "(postgres://user:password@host:6432/db)."
    )
    redis_url: SecretStr = Field(description="Redis URL (redis://[:password@]host:6379/0).")

    # --- database -------------------------------------------------------------------------
    migration_database_url: SecretStr | None = Field(
        default=None,
        description="PostgreSQL URL for migrations, DIRECT to PostgreSQL (not PgBouncer). "
        "Defaults to database_url.",
    )
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)
    db_connect_timeout: float = Field(default=5.0, gt=0)
    db_command_timeout: float = Field(default=30.0, gt=0)
    db_statement_cache_size: int = Field(
        default=0,
        ge=0,
        description="asyncpg's prepared statements kept per connection. 0 through PgBouncer "
        "1.18 (Debian 12): in transaction pooling it cannot follow a named statement from one "
        "server connection to the next. PgBouncer 1.21+ (Debian 13: 1.24) does, up to its "
        "max_prepared_statements: keep this at or below that.",
    )

    # --- redis ----------------------------------------------------------------------------
    redis_max_connections: int = Field(default=50, ge=1)
    redis_socket_timeout: float = Field(default=2.0, gt=0)
    # Seconds a call waits for a free pooled connection when all are busy.
    redis_pool_timeout: float = Field(default=5.0, gt=0)
    # NoDecode: the env value is a plain comma-separated list, split by the validator below.
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Redis Sentinel addresses (host:port, comma-separated). Set: the master "
        "is asked of them on every new connection (redis_url then gives only the user, "
        "password, database and TLS). Empty: redis_url's Redis is used directly.",
    )
    redis_sentinel_master: str = Field(
        default="koinonia", min_length=1, description="The master set's name in Sentinel."
    )
    redis_sentinel_username: str | None = Field(
        default=None, description="User the app logs in to Sentinel with (none: the default)."
    )
    redis_sentinel_password: SecretStr | None = Field(
        default=None, description="Password of Sentinel itself (its requirepass)."
    )
    redis_failover_retry_seconds: float = Field(
        default=10.0,
        ge=0,
        description="Through Sentinel: how long a command that lost its connection or found "
        "no master is retried (exponential backoff, capped at 1 s), so a failover is waited "
        "out instead of failing requests and jobs.",
    )

    # --- http -----------------------------------------------------------------------------
    environment: Literal["development", "production", "test"] = "development"
    release: str = Field(default="dev", description="Deployed release id (logs and /metrics).")
    bind: str = "0.0.0.0:3000"
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1)
    graceful_timeout: float = Field(default=30.0, ge=0)
    shutdown_drain_seconds: float = Field(
        default=3.0,
        ge=0,
        description="After SIGTERM, keep accepting (readiness 503) this long before closing.",
    )
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    member_import_max_bytes: int = Field(
        default=20 * 1_048_576,
        ge=1,
        description="Largest body of POST /api/members/import (the only route above "
        "max_body_bytes): 50,000 CSV rows with room to spare.",
    )
    health_check_timeout: float = Field(default=1.0, gt=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = Field(default=True, description="One JSON log line per request.")
    fast_path: bool = Field(
        default=True,
        description="Answer GET /health, and a cached GET /api/members whose session and page "
        "this process holds, before Quart's request machinery (koinonia/web/fast_path.py); "
        "same checks, same response.",
    )

    # --- sessions -------------------------------------------------------------------------
    session_cookie_name: str = "koinonia_session"
    session_ttl_seconds: int = Field(default=86_400, ge=60)
    staff_invite_ttl_seconds: int = Field(
        default=7 * 86_400,
        ge=300,
        le=30 * 86_400,
        description="How long a staff invite's token can be accepted.",
    )
    session_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=30,
        description="Longest a process answers a session from its own cache (0: never). "
        "Revocations evict it at once through Redis pub/sub; this bounds a missed one.",
    )
    cookie_secure: bool | None = Field(
        default=None, description="Secure flag on the session cookie; default: on in production."
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed logins per account (email) before login is locked.",
    )
    login_lockout_seconds: int = Field(
        default=900,
        ge=1,
        description="Window of the failure count, and how long a locked account stays locked.",
    )
    # NoDecode: the env value is a plain comma-separated list, split by the validator below.
    csrf_trusted_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins besides public_base_url's whose cookie-authenticated "
        "state-changing requests are accepted (comma-separated).",
    )

    # --- members --------------------------------------------------------------------------
    default_phone_region: str = Field(
        default="US",
        min_length=2,
        max_length=2,
        description="ISO country assumed for phone numbers written without +country code.",
    )

    # --- cache ----------------------------------------------------------------------------
    cache_analytics_ttl_seconds: int = Field(default=300, ge=1)
    cache_members_ttl_seconds: int = Field(default=1_800, ge=1)
    cache_local_seconds: float = Field(
        default=5.0,
        ge=0,
        le=30,
        description="Longest a process serves its own copy of a cached page (0: never). "
        "Version bumps evict it at once through Redis pub/sub; this bounds a missed one.",
    )

    # --- jobs and SMS (used by the messaging half) ----------------------------------------
    queue_name: str = "koinonia-sms"
    # Backpressure. Redis refuses writes at its maxmemory (noeviction, as a queue needs), and
    # then SAQ can neither dequeue nor finish a job: the queue would wedge until an operator
    # freed memory. So new messages are refused (503 queue_full, nothing recorded) while
    # Redis's used memory is at or above this fraction of its maxmemory, and the workers keep
    # the rest to drain it. No maxmemory set: never refused.
    queue_memory_high_watermark: float = Field(default=0.8, gt=0, le=1)
    worker_concurrency: int = Field(default=10, ge=1)
    sms_provider: Literal["log", "twilio"] = "log"
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from_number: str | None = None
    twilio_base_url: str = "https://api.twilio.com"
    public_base_url: str = Field(
        default="http://localhost:3000",
        description="Externally visible base URL; provider webhook signatures are computed on it.",
    )
    # Added by the messaging half: delivery retries (RETRIES after the first attempt, so SAQ
    # gets retries+1 total attempts), exponential backoff base delay and its upward jitter.
    sms_max_retries: int = Field(default=3, ge=0)
    sms_retry_delay_seconds: float = Field(default=2.0, ge=0)
    sms_retry_jitter: float = Field(default=0.1, ge=0, le=1)
    # A send job carries a chunk of deliveries and one event; it claims a window of at most
    # sms_send_concurrency rows at a time (only what is about to be sent: a killed worker
    # leaves only its calls in flight in doubt), refilled as calls finish, each window's
    # results written with the next window's claim (the Twilio client keeps as many
    # connections). The job timeout bounds one chunk, so it must cover
    # chunk / concurrency rounds of a provider call that times out (10 s).
    sms_chunk_size: int = Field(default=100, ge=1, le=1000)
    sms_send_concurrency: int = Field(default=50, ge=1, le=500)
    # Provider calls one worker process has in flight across all its jobs (0: no bound but
    # worker_concurrency x sms_send_concurrency). A provider account has a concurrency limit
    # of its own (Twilio answers 429 beyond it), and with this bound and a job or two more
    # than it needs, a worker keeps its calls in flight while a job drains its last ones.
    sms_worker_send_concurrency: int = Field(default=0, ge=0, le=5000)
    sms_job_timeout_seconds: int = Field(default=60, ge=1)
    # How long an ``unknown`` delivery (the provider may have texted it) is looked up at the
    # provider before it is reported as unresolved for an operator to decide.
    sms_unknown_resolve_seconds: int = Field(default=3600, ge=60, le=7 * 86_400)
    # A delivery still ``queued`` this long after it was due lost its job (Redis failed at
    # the enqueue) and is enqueued again by the stalled sweep, which runs this often, on a
    # clock that divides the hour (a divisor of 60 seconds, or of 60 minutes in minutes).
    sms_stalled_after_seconds: int = Field(default=300, ge=10, le=3600)
    worker_shutdown_grace_seconds: int = Field(default=25, ge=0)
    phone_link_max_attempts: int = Field(default=5, ge=1)
    webhook_replay_ttl_seconds: int = Field(
        default=86_400,
        ge=1,
        description="How long a signed provider callback is remembered to refuse its replay.",
    )
    worker_metrics_bind: str = Field(
        default="127.0.0.1:9101",
        description="host:port where `koinonia worker` serves its Prometheus /metrics; "
        "empty disables.",
    )

    @field_validator("database_url", "redis_url", "migration_database_url")
    @classmethod
    def _url_has_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not urlsplit(value.get_secret_value()).scheme:
            raise ValueError("must be a URL with a scheme")
        return value

    @field_validator("database_url", "migration_database_url")
    @classmethod
    def _postgres_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = urlsplit(value.get_secret_value()).scheme
            if scheme not in {"postgres", "postgresql", "asyncpg"}:
                raise ValueError("must be a postgres:// URL")
        return value

    @field_validator("sms_stalled_after_seconds")
    @classmethod
    def _divides_the_hour(cls, value: int) -> int:
        divides_a_minute = 60 % value == 0
        minutes_dividing_an_hour = value % 60 == 0 and 60 % (value // 60) == 0
        if not (divides_a_minute or minutes_dividing_an_hour):
            raise ValueError(
                "must divide a minute (10, 12, 15, 20 or 30 seconds) or be whole minutes "
                "dividing an hour (60, 120, ... 300, 600, ... 3600)"
            )
        return value

    @field_validator("worker_metrics_bind")
    @classmethod
    def _host_port_or_empty(cls, value: str) -> str:
        value = value.strip()
        if value:
            _host, sep, port = value.rpartition(":")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("must be host:port (or empty to disable)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_tls_parameters(cls, value: SecretStr) -> SecretStr:
        # Caught here rather than at the first connection, where they look like an
        # unreachable Redis: TLS files asked for on a plain-text URL (the traffic would go
        # unencrypted, to Redis and to the Sentinels alike), and TLS files that cannot be read.
        url = urlsplit(value.get_secret_value())
        files = {
            name: path
            for name, path in parse_qsl(url.query)
            if name in {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}
        }
        if files and url.scheme != "rediss":
            raise ValueError(
                f"{', '.join(files)} given on a {url.scheme}:// URL: use rediss:// for TLS "
                "(to Redis and to its Sentinels)"
            )
        for name, path in files.items():
            if not os.access(path, os.R_OK) or not os.path.isfile(path):
                raise ValueError(f"{name}: {path} is not a file this process can read")
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            return [item for item in (part.strip() for part in value.split(",")) if item]
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        for item in value:
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{item!r} is not host:port")
        return value

    @field_validator("csrf_trusted_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [item for item in (part.strip() for part in value.split(",")) if item]
        return value

    @field_validator("csrf_trusted_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        origins = []
        for item in value:
            origin = url_origin(item)
            if origin is None:
                raise ValueError(f"{item!r} is not an origin like https://host[:port]")
            origins.append(origin)
        return origins

    @field_validator("public_base_url")
    @classmethod
    def _public_url_has_origin(cls, value: str) -> str:
        if url_origin(value) is None:
            raise ValueError("must be an absolute http(s) URL")
        return value

    @property
    def trusted_origins(self) -> frozenset[str]:
        """Origins whose pages may send cookie-authenticated state-changing requests."""
        own = url_origin(self.public_base_url)
        return frozenset([*([own] if own else []), *self.csrf_trusted_origins])

    @property
    def session_cookie_secure(self) -> bool:
        if self.cookie_secure is not None:
            return self.cookie_secure
        return self.environment == "production"

    @property
    def migration_url(self) -> str:
        chosen = self.migration_database_url or self.database_url
        return chosen.get_secret_value()


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise ``SettingsError`` naming what is wrong."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ENV_PREFIX + "_".join(str(part) for part in error["loc"]).upper()
            if error["type"] == "missing":
                problems.append(f"missing required setting {name}")
            else:
                problems.append(f"invalid setting {name}: {error['msg']}")
        raise SettingsError("; ".join(problems)) from None
