"""The one typed configuration of the front daemon and how it is loaded.

`Config` holds every knob with its default. `load()` merges, lowest to highest precedence:
defaults < `switchboard.toml` (or --config FILE) < `SWITCHBOARD_<FIELD>` environment
variables < command-line flags. Keys in the file and the environment use the field names
below (`idle_timeout_s`); the unit-less spellings of the Contract (`idle_timeout`) work too.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard.errors import ConfigError

DEFAULT_DATA_DIR = "./switchboard-data"


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]") or "127.0.0.1", int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Config:
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    listen: HostPort = HostPort("127.0.0.1", 8000)
    admin_listen: HostPort = HostPort("127.0.0.1", 8001)
    app: str = "examples.dabble:app"

    # Routing: "path" serves /t/<tenant>/..., "host" serves <tenant>.<base_domain>.
    routing: str = "path"
    base_domain: str = ""

    # Lifecycle.
    idle_timeout_s: float = 120.0
    max_resident: int = 32
    start_timeout_s: float = 15.0
    stop_timeout_s: float = 10.0  # SIGTERM, this long, then SIGKILL
    ping_interval_s: float = 10.0
    ping_timeout_s: float = 5.0
    max_boot_failures: int = 5  # then `failed` until an operator starts it
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    # A worker that reported `ready` has booted: its crash restarts at once on the next
    # request, unless it is the crash_loop_crashes-th within crash_loop_window_s (then backoff).
    crash_loop_crashes: int = 5
    crash_loop_window_s: float = 60.0

    # Limits.
    max_body_bytes: int = 10 * 1024 * 1024
    max_import_bytes: int = 1 << 30  # an admin import's upload, streamed to transfers/
    max_waiting_requests: int = 1024  # per tenant, while it starts
    port_range: tuple[int, int] = (20000, 29999)  # for worker_transport = "tcp"

    # Workers listen on a Unix socket in <data-dir>/run/ that only this user can open ("unix"),
    # or on a stable loopback port ("tcp": any local user can connect to it).
    worker_transport: str = "unix"
    worker_group: str = ""  # a group (the web server's) let into run/ for direct mode
    max_concurrent_checkpoints: int = 2  # forked checkpoints copy up to the heap each
    max_worker_rss_bytes: int = 0  # 0: no limit; past it a worker is recycled between requests
    max_worker_address_space_bytes: int = 0  # RLIMIT_AS the worker sets on itself; 0: none
    max_worker_open_files: int = 0  # RLIMIT_NOFILE the worker sets on itself; 0: as inherited
    max_busy_s: float = 3600.0  # declared busy work keeps a worker resident this long at most
    request_timeout_s: float = 300.0  # a worker that sends no answer this long: 504

    # The front edge (switchboard.edge): request heads, client timeouts, connections, trust.
    max_request_line_bytes: int = 8 * 1024  # over it: 414
    max_header_bytes: int = 16 * 1024  # one header line; over it: 431
    max_headers_total_bytes: int = 64 * 1024  # all header lines; over it: 431
    max_header_count: int = 100  # over it: 431
    header_timeout_s: float = 30.0  # the whole request head, else 408
    body_timeout_s: float = 60.0  # a request body silent this long while read: 408
    keepalive_timeout_s: float = 75.0  # an idle client connection between requests is closed
    max_client_connections: int = 10_000  # and what RLIMIT_NOFILE allows; beyond: 503
    trusted_proxies: tuple[str, ...] = ()  # IPs/CIDRs whose X-Forwarded-* etc. are believed

    # Durability (passed to workers).
    journal_fsync: str = "always"  # always | everysec | never
    keep_generations: int = 3

    # Processes.
    use_zygote: bool = True
    zygote_wait_s: float = 2.0  # a spawn waits this long for a starting zygote, then goes fresh
    log_format: str = "auto"  # auto (json unless a terminal) | json | text
    log_level: str = "info"
    # Lets Prometheus scrape /metrics with `Authorization: Bearer <token>` (its `authorization`
    # setting) instead of signing; empty: /metrics must be signed like every admin call.
    metrics_token: str = ""
    # Each worker's output goes to <data-dir>/logs/<name>.log, rotated at this size, with at
    # most tenant_log_backups older files kept (tenant/output.py).
    tenant_log_max_bytes: int = 10 * 1024 * 1024
    tenant_log_backups: int = 3

    # Direct mode (switchboard/direct.py): the router keeps <data-dir>/direct/ current for
    # this front server ("nginx" or "apache"; "" off), runs direct_reload_command (split like
    # a shell line, no shell) at most once per direct_reload_delay_s, and waits direct_drain_s
    # after a reload that took a tenant out before it stops that tenant's worker.
    direct_mode: str = ""
    direct_reload_command: str = ""
    direct_reload_delay_s: float = 0.2
    direct_drain_s: float = 1.0

    # Moving tenants between hosts (switchboard/migration.py, docs/migration.md).
    advertise_url: str = ""  # this router as other hosts reach it; "": http://<listen>
    advertise_admin_url: str = ""  # this admin API as other hosts reach it; "": http://<admin>
    forward_mode: str = "proxy"  # a moved tenant's requests: "proxy" to its host, "redirect" 307
    migrate_drain_timeout_s: float = 10.0  # the switch waits this long for in-flight requests
    migrate_checkpoint_records: int = 1000  # pre-copy checkpoints first past this many records

    # Cluster mode (docs/cluster.md): the directory, journals and snapshots in PostgreSQL at
    # cluster_url ("": standalone); this host's id (""; the hostname) and its lease's seconds.
    cluster_url: str = ""
    host_id: str = ""
    lease_ttl_s: float = 10.0

    # Code versions (switchboard/versions.py): name -> a directory put first on the workers'
    # sys.path, e.g. [code_versions] v2 = "/srv/app-v2"; tenants run default_code_version
    # ("" : the app as installed) unless pinned. A breakpoint's pdb is released after
    # breakpoint_timeout_s (switchboard attach --break).
    code_versions: Mapping[str, str] = field(default_factory=dict)
    default_code_version: str = ""
    breakpoint_timeout_s: float = 300.0

    extra: Mapping[str, Any] = field(default_factory=dict)

    # Keys the MAC of snapshots and journals (not admin calls): hosts that migrate between
    # each other or form a cluster share it. Default <data-dir>/snapshot.key.
    snapshot_key_file: Path | None = None
    allow_unsigned: bool = False  # restore unsigned pickle snapshots (they can run code)

    @property
    def key_file(self) -> Path:
        return self.data_dir / "admin.key"

    @property
    def nonce_file(self) -> Path:
        """Admin nonces accepted within the replay window (switchboard/nonces.py)."""
        return self.data_dir / "nonces"

    @property
    def snapshot_key_path(self) -> Path:
        return self.snapshot_key_file or self.data_dir / "snapshot.key"


_ALIASES = {
    "idle_timeout": "idle_timeout_s",
    "start_timeout": "start_timeout_s",
    "stop_timeout": "stop_timeout_s",
    "max_body": "max_body_bytes",
}
_FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "extra"}


def _coerce(name: str, raw: Any) -> Any:
    default = getattr(Config(), name)
    try:
        if isinstance(default, HostPort):
            return raw if isinstance(raw, HostPort) else HostPort.parse(str(raw))
        if isinstance(default, Path) or name.endswith("_file"):
            return Path(os.path.expanduser(str(raw)))
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(raw)
            return text in {"1", "true", "yes", "on"}
        if name == "code_versions":
            from switchboard.versions import parse_code_versions

            return parse_code_versions(raw)
        if name == "trusted_proxies":
            items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
            entries = tuple(str(item).strip() for item in items if str(item).strip())
            for entry in entries:
                ipaddress.ip_network(entry, strict=False)  # ValueError: not an IP or CIDR
            return entries
        if isinstance(default, tuple):
            parts = raw if isinstance(raw, list | tuple) else str(raw).replace("-", ",").split(",")
            low, high = (int(p) for p in parts)
            if not 1024 <= low <= high <= 65535:
                raise ValueError(raw)
            return (low, high)
        if isinstance(default, int | float):
            number = type(default)(raw)
            if number < 0:
                raise ValueError(raw)
            return number
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value for {name}: {raw!r}") from exc


def _normalise(source: str, values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in values.items():
        name = _ALIASES.get(key, key)
        if name not in _FIELDS:
            import difflib

            close = difflib.get_close_matches(key, [*_FIELDS, *_ALIASES], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown setting {key!r} in {source}{hint}")
        out[name] = _coerce(name, raw)
    return out


def load(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config: defaults < file < environment < overrides (flags; None values ignored).

    Without an explicit file, `switchboard.toml` in the working directory is read if present.
    """
    return load_with_sources(config_file, env, overrides)[0]


def load_with_sources(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Config, dict[str, str]]:
    """`load()`, and where each field's value came from: `default`, `file PATH`,
    `env SWITCHBOARD_NAME` or `flag` (what `switchboard config show` prints)."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    sources = dict.fromkeys(_FIELDS, "default")
    path = config_file or env.get("SWITCHBOARD_CONFIG")
    if path is None and Path("switchboard.toml").exists():
        path = "switchboard.toml"
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        from_file = _normalise(str(path), data.get("switchboard", data))
        merged.update(from_file)
        sources.update(dict.fromkeys(from_file, f"file {path}"))
    from_env = {}
    for key, value in env.items():
        if key.startswith("SWITCHBOARD_") and key not in {
            "SWITCHBOARD_CONFIG", "SWITCHBOARD_ADMIN", "SWITCHBOARD_KEY_FILE",
        }:
            name = key[len("SWITCHBOARD_"):].lower()
            if _ALIASES.get(name, name) in _FIELDS:
                from_env[name] = value
                sources[_ALIASES.get(name, name)] = f"env {key}"
    merged.update(_normalise("the environment", from_env))
    flags = {key: value for key, value in (overrides or {}).items() if value is not None}
    from_flags = _normalise("flags", flags)
    merged.update(from_flags)
    sources.update(dict.fromkeys(from_flags, "flag"))
    config = Config(**merged)
    if config.routing not in {"path", "host"}:
        raise ConfigError(f"routing must be 'path' or 'host', not {config.routing!r}")
    if config.routing == "host" and not config.base_domain:
        raise ConfigError("routing = 'host' needs base_domain")
    if config.journal_fsync not in {"always", "everysec", "never"}:
        raise ConfigError(
            f"journal_fsync must be always, everysec or never, not {config.journal_fsync!r}")
    if config.worker_transport not in {"unix", "tcp"}:
        raise ConfigError(
            f"worker_transport must be 'unix' or 'tcp', not {config.worker_transport!r}")
    if config.forward_mode not in {"proxy", "redirect"}:
        raise ConfigError(
            f"forward_mode must be 'proxy' or 'redirect', not {config.forward_mode!r}")
    if config.direct_mode not in {"", "nginx", "apache"}:
        raise ConfigError(
            f"direct_mode must be 'nginx', 'apache' or '' (off), not {config.direct_mode!r}")
    if config.max_resident < 1:
        raise ConfigError("max_resident must be at least 1")
    if config.cluster_url and not config.cluster_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"cluster_url must be postgresql://USER@HOST:PORT/DB, not "
                          f"{config.cluster_url!r}")
    if config.lease_ttl_s < 1:
        raise ConfigError("lease_ttl_s must be at least 1 second")
    if config.default_code_version and config.default_code_version not in config.code_versions:
        raise ConfigError(f"default_code_version {config.default_code_version!r} is not one of "
                          f"code_versions ({', '.join(config.code_versions) or 'none'})")
    for name in ("max_request_line_bytes", "max_header_bytes", "max_headers_total_bytes",
                 "max_header_count", "max_client_connections"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be more than 0")
    return config, sources
