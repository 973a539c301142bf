"""Segmented state: the parts of a tenant's state that load and save independently.

The programming model (README "Segmented state"): an app that passes
`TenantApp(segment_groups=(...))` has a segmented state. Its root is a mapping; each top-level
value is one *segment*, except the keys named in `segment_groups`, whose values are mappings of
segments (a *group*: the demo app's `state["tables"]` holds one segment per table, and
`state["sessions"]` is one segment). The app keeps writing `state["tables"][name]["records"]`
as before; the runtime hands it `Segments` mappings in place of those dicts (initial_state,
import_data and upgrade functions may return plain dicts: they are converted). An app that
declares nothing has one segment, its whole state, exactly as before.

- Lazy: after a restore a segment is decoded the first time it is read through the mapping
  (`state["sessions"]`, `state["tables"]["t1"]`); the key set (`in`, `len`, iteration over
  keys) needs no load. The rest is loaded in the background (tenant/lazyload.py).
- Dirty tracking is exact: while a command runs (TenantApp.apply, also at journal replay),
  every segment it reaches through the mapping is marked changed, whether it then writes to
  it or not; adding, replacing or deleting a segment marks it too. A checkpoint packs and
  writes the marked segments and refers to the others (snapshots/segment_files.py). So a
  command must reach its segments through the state it is given, and keep no reference to a
  segment's value between commands (the rule the Prevayler model already makes).
- Segment keys are non-empty str without "/". A state with other keys at those levels stays
  one segment (a whole-state snapshot, as for an app that declares nothing).
- `TenantContext.mark_dirty` (the debug console changed the state outside a command) marks
  every loaded segment.

A segment that fails its checksum when loaded raises snapshots.errors.SegmentCorrupt from the
mapping access; `on_fault` (set by the worker: tenant/lazyload.py) is told first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from snapshots.codec import gc_paused, get_codec
from snapshots.errors import SegmentCorrupt
from snapshots.segments import SegmentedIndex, SegmentEntry, read_segment

_tracking = 0  # > 0 while a command runs: reads through a Segments mark the segment changed
on_fault: Callable[[SegmentCorrupt, SegmentEntry], None] | None = None


@contextlib.contextmanager
def tracking() -> Iterator[None]:
    """Inside a command: every segment reached through a Segments mapping is marked changed."""
    global _tracking
    _tracking += 1
    try:
        yield
    finally:
        _tracking -= 1


class _Slot:
    """One segment: its value (once loaded), where it was last saved, whether it changed."""

    __slots__ = ("dirty", "entry", "loaded", "value")

    def __init__(self, value: Any = None, *, entry: SegmentEntry | None = None,
                 loaded: bool = True) -> None:
        self.value = value
        self.entry = entry  # None: never saved, so the next checkpoint writes it
        self.loaded = loaded
        self.dirty = entry is None

    def load(self) -> Any:
        if not self.loaded:
            assert self.entry is not None
            try:
                data = read_segment(self.entry)
            except SegmentCorrupt as exc:
                self.fault(exc)
                raise
            self.install(data)
        return self.value

    def install(self, data: bytes) -> None:
        """Decode the segment from its verified bytes (read_segment), unless loaded since."""
        if not self.loaded:
            assert self.entry is not None
            # Frozen as a whole restore's state is (tenant/runtime.py): long-lived, so the
            # collector never walks it, and a forked checkpoint never copies it for that.
            with gc_paused(freeze=True):
                self.value = get_codec(self.entry.codec).loads(data)
            self.loaded = True

    def fault(self, error: SegmentCorrupt) -> None:
        """Its bytes failed their check: tell `on_fault` (the worker), once per error."""
        if on_fault is not None and self.entry is not None:
            on_fault(error, self.entry)


class Segments(MutableMapping[str, Any]):
    """A mapping whose values are segments (see the module docstring), or, at the root, groups
    of segments (other Segments)."""

    __slots__ = ("_groups", "_slots")

    def __init__(self, items: Mapping[str, Any] | None = None, *,
                 groups: tuple[str, ...] = ()) -> None:
        self._slots: dict[str, _Slot | Segments] = {}
        self._groups = groups  # keys that hold groups (the root only)
        for key, value in (items or {}).items():
            self[key] = value

    def __getitem__(self, key: str) -> Any:
        slot = self._slots[key]
        if isinstance(slot, Segments):
            return slot
        value = slot.load()
        if _tracking:
            slot.dirty = True
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(f"a segment's key is a non-empty str without '/', not {key!r}")
        if key in self._groups:
            self._slots[key] = value if isinstance(value, Segments) else Segments(value)
        else:
            self._slots[key] = _Slot(value)

    def __delitem__(self, key: str) -> None:
        del self._slots[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, key: object) -> bool:
        return key in self._slots

    def __repr__(self) -> str:
        return f"Segments({list(self._slots)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (plain(self),))  # pickled (or copied) as the plain data it holds

    def slots(self, prefix: str = "") -> Iterator[tuple[str, _Slot]]:
        """(segment name, slot) of every segment under this mapping, in order."""
        for key, slot in self._slots.items():
            if isinstance(slot, Segments):
                yield from slot.slots(f"{prefix}{key}/")
            else:
                yield prefix + key, slot

    @property
    def groups(self) -> tuple[str, ...]:
        return self._groups


def adopt(state: Any, groups: tuple[str, ...] | None) -> Any:
    """The state the worker keeps: for a segmented app (`groups` not None), a Segments root
    (lazy when `state` is a SegmentedIndex; a plain dict's segments all count as changed, so
    the next checkpoint writes them as a segmented generation); otherwise the state itself
    (a SegmentedIndex read fully: the app stopped declaring segments)."""
    if groups is None:
        return plain(state) if isinstance(state, SegmentedIndex) else state
    if isinstance(state, Segments):
        return state
    if isinstance(state, SegmentedIndex):
        return _lazy_root(state, groups)
    if not isinstance(state, Mapping):
        raise TypeError(f"a segmented app's state is a mapping, not {type(state).__name__}")
    if not all(_nameable(k) for k in state) or not all(
            isinstance(state[g], Mapping) and all(_nameable(k) for k in state[g])
            for g in groups if g in state):
        return state  # keys that cannot name segments: kept as one segment, as before
    return Segments(state, groups=groups)


def _nameable(key: object) -> bool:
    return isinstance(key, str) and bool(key) and "/" not in key


def _lazy_root(index: SegmentedIndex, groups: tuple[str, ...]) -> Segments:
    root = Segments(groups=groups)
    for group in groups:
        if group in index.groups:
            root[group] = Segments()
    for entry in index.entries:
        where = root
        key = entry.name
        group, _, inner = entry.name.partition("/")
        if inner:
            if group not in groups:  # the app no longer groups this key: load it plainly
                return Segments(plain(index), groups=groups)
            where, key = root._slots.setdefault(group, Segments()), inner  # type: ignore[assignment]
        elif entry.name in groups:
            return Segments(plain(index), groups=groups)
        where._slots[key] = _Slot(entry=entry, loaded=False)
    return root


def plain(state: Any) -> Any:
    """The state as plain dicts (every segment loaded): for export and for code that does
    not know segments."""
    if isinstance(state, SegmentedIndex):
        out: dict[str, Any] = {group: {} for group in state.groups}
        for entry in state.entries:
            value = get_codec(entry.codec).loads(read_segment(entry))
            group, _, inner = entry.name.partition("/")
            if inner:
                out.setdefault(group, {})[inner] = value
            else:
                out[entry.name] = value
        return out
    if isinstance(state, Segments):
        return {key: plain(slot) if isinstance(slot, Segments) else slot.load()
                for key, slot in state._slots.items()}
    return state


def unloaded(state: Any) -> list[_Slot]:
    """The segments not loaded yet (none for an unsegmented state)."""
    if not isinstance(state, Segments):
        return []
    return [slot for _, slot in state.slots() if not slot.loaded]


def mark_all(state: Any) -> None:
    """Mark every loaded segment changed (a change made outside a command)."""
    if isinstance(state, Segments):
        for _, slot in state.slots():
            if slot.loaded:
                slot.dirty = True


class Plan:
    """What one checkpoint of a Segments root writes: taken (the changed marks cleared) when
    the checkpoint takes its position, so commands after it mark segments for the next one."""

    def __init__(self, root: Segments) -> None:
        self.root = root
        self.slots = list(root.slots())
        self.changed = [slot for _, slot in self.slots if slot.dirty]
        for slot in self.changed:
            slot.dirty = False
        self._changed_ids = {id(slot) for slot in self.changed}

    @property
    def groups(self) -> list[str]:
        return [group for group in self.root.groups if group in self.root]

    def sources(self, dumps: Callable[[Any], bytes]) -> list[tuple[str, bytes | SegmentEntry]]:
        """Each segment's new bytes (changed, never saved, or saved inside a self-contained
        file), or the entry of the segment file that still holds it. Runs in the checkpoint
        child, on the copy-on-write view of the state as of `Plan(...)`."""
        out: list[tuple[str, bytes | SegmentEntry]] = []
        for name, slot in self.slots:
            entry = slot.entry
            if id(slot) in self._changed_ids or entry is None or not entry.ref:
                out.append((name, dumps(slot.load())))
            else:
                out.append((name, entry))
        return out

    def saved(self, entries: list[dict[str, Any]]) -> None:
        """The generation landed: each segment's entry is now the one it names (`entries`:
        SegmentEntry.to_dict() plus "path", the segment file on this host)."""
        by_name = {raw["name"]: raw for raw in entries}
        for name, slot in self.slots:
            raw = by_name.get(name)
            if raw is not None:
                slot.entry = SegmentEntry.from_dict(raw, path=raw["path"])

    def failed(self) -> None:
        """The checkpoint did not land: what it would have saved is still to be saved."""
        for slot in self.changed:
            slot.dirty = True


def load_all(state: Any) -> None:
    """Load every segment now (a reader that must not depend on files a live worker's later
    checkpoints may prune: the shadow restore of an upgrade)."""
    for slot in unloaded(state):
        slot.load()
