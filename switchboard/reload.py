"""`systemctl reload switchboard` (SIGHUP): re-read the settings and apply those that can
change while the router runs. Runs in the router.

The settings are loaded again from the same sources as at start (the config file, the
environment the router was started with, its flags). What is applied at once:

    RELOADABLE below: lifecycle timeouts and limits, the request-size limit and timeouts,
    the health-ping and crash-loop knobs, trusted_proxies, log_level, metrics aside, and
    the direct-mode reload command, delay and drain time

Everything else (addresses, data dir, app, routing, worker transport, zygote, snapshot key,
direct_mode itself...) needs a restart: a changed one is named in the log, and the router
keeps running with the old value. A file that does not load (bad TOML, a bad value) changes
nothing and is logged as an error.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from switchboard.config import Config
from switchboard.errors import ConfigError

log = logging.getLogger("switchboard.reload")

RELOADABLE = frozenset({
    "idle_timeout_s", "max_resident", "start_timeout_s", "stop_timeout_s", "ping_interval_s",
    "ping_timeout_s", "max_boot_failures", "backoff_base_s", "backoff_max_s",
    "crash_loop_crashes", "crash_loop_window_s", "max_body_bytes", "max_waiting_requests",
    "max_worker_rss_bytes", "max_busy_s", "request_timeout_s", "trusted_proxies",
    "log_level", "direct_reload_command", "direct_reload_delay_s", "direct_drain_s",
})


def reloaded(current: Config, load: Callable[[], Config]) -> tuple[Config, list[str]]:
    """The Config to run with after a reload, and the names of the settings that changed.
    On a load error, `current` and no changes."""
    try:
        fresh = load()
    except (ConfigError, OSError) as exc:
        log.error("reload: the configuration does not load, nothing changed: %s", exc)
        return current, []
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(Config):
        old, new = getattr(current, field.name), getattr(fresh, field.name)
        if old == new:
            continue
        if field.name in RELOADABLE:
            changes[field.name] = new
        elif field.name != "extra":
            log.warning("reload: %s changed (%r -> %r) but takes a restart; still %r",
                        field.name, old, new, old)
    if changes:
        log.info("reload: applied %s", ", ".join(f"{k} = {v!r}" for k, v in changes.items()))
    else:
        log.info("reload: no reloadable setting changed")
    return dataclasses.replace(current, **changes), sorted(changes)
