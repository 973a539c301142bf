"""The tenant programming model: what an app declares so the runtime can keep its state.

An app's state is one root object (plain data for the msgpack codec; any picklable graph for
the opt-in pickle codec) that changes only through *commands*, as in Prevayler. A command is a
function `fn(state, now, **args) -> result`:

- it validates its arguments first and raises `CommandRejected` (or `NotFound`) before it
  mutates anything, so a rejected command leaves the state as it was and is not journaled;
- it receives the current time as `now` (Unix seconds, float) and never reads a clock, a random
  source or the environment itself, so replaying the journal gives the same state every time;
- its arguments and result are plain data (what the codec can encode).

The runtime applies a command in the event loop, appends it to the journal, and returns only
once the journal is durable. Schema evolution: `schema_version` is the version this code
writes; `@app.upgrade(n)` registers the function that turns a version-n state into version n+1.

Export and import (`switchboard export|import`, tenant/export.py): `export_data(state)` returns
the data to put in an export file, plain data the msgpack codec packs, independent of how the
state is laid out in memory; `import_data(data)` builds a state from it. Both are optional: the
default exports the state itself and imports the data as the state. The data an import gets is
at the export's schema version; the upgrade functions then run as for an old snapshot.

Segments: `segment_groups=(...)` makes the state segmented (tenant/segments.py: each top-level
value of the root is a segment, and each value of a key named in segment_groups is one), loaded
lazily and checkpointed incrementally; None (the default) keeps one segment, the whole state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tenant.errors import CommandRejected, UpgradeError
from tenant.segments import tracking

CommandFn = Callable[..., Any]
UpgradeFn = Callable[[Any], Any]
DataHook = Callable[[Any], Any]
ASGIApp = Callable[..., Any]


class TenantApp:
    """A tenant application: its commands, its schema, its ASGI app."""

    def __init__(
        self,
        *,
        name: str,
        initial_state: Callable[[], Any],
        schema_version: int = 1,
        app_version: str = "0",
        codec: str = "msgpack",
        asgi: ASGIApp | None = None,
        export_data: DataHook | None = None,
        import_data: DataHook | None = None,
        segment_groups: tuple[str, ...] | None = None,
    ) -> None:
        if codec not in {"msgpack", "pickle"}:
            raise ValueError(f"codec must be 'msgpack' or 'pickle', not {codec!r}")
        self.name = name
        self.initial_state = initial_state
        self.schema_version = schema_version
        self.app_version = app_version
        self.codec = codec
        self.asgi = asgi
        self.export_data = export_data  # state -> plain data; None: the state itself
        self.import_data = import_data  # plain data -> state; None: the data itself
        self.segment_groups = segment_groups  # None: not segmented (tenant/segments.py)
        self.commands: dict[str, CommandFn] = {}
        self.upgrades: dict[int, UpgradeFn] = {}

    def command(self, name: str | None = None) -> Callable[[CommandFn], CommandFn]:
        """Register `fn(state, now, **args)` as command `name` (default: the function's name)."""

        def register(fn: CommandFn) -> CommandFn:
            key = name or fn.__name__
            if key in self.commands:
                raise ValueError(f"command {key!r} registered twice")
            self.commands[key] = fn
            return fn

        return register

    def upgrade(self, from_version: int) -> Callable[[UpgradeFn], UpgradeFn]:
        """Register `fn(state) -> state` turning a `from_version` state into `from_version + 1`."""

        def register(fn: UpgradeFn) -> UpgradeFn:
            if from_version in self.upgrades:
                raise ValueError(f"upgrade from schema {from_version} registered twice")
            self.upgrades[from_version] = fn
            return fn

        return register

    def apply(self, state: Any, name: str, args: dict[str, Any], now: float) -> Any:
        """Run one command against `state`. Raises CommandRejected for unknown commands."""
        fn = self.commands.get(name)
        if fn is None:
            raise CommandRejected(f"unknown command {name!r}")
        with tracking():  # a segmented state marks what the command reaches
            return fn(state, now, **args)

    def upgrade_state(self, state: Any, from_version: int) -> Any:
        """Run the upgrade functions from `from_version` up to `schema_version`, in order."""
        if from_version > self.schema_version:
            raise UpgradeError(
                f"the snapshot has schema version {from_version} but this code knows only up to "
                f"{self.schema_version}: run a newer app version for this tenant"
            )
        for version in range(from_version, self.schema_version):
            fn = self.upgrades.get(version)
            if fn is None:
                raise UpgradeError(f"no upgrade registered from schema {version} to {version + 1}")
            state = fn(state)
        return state
