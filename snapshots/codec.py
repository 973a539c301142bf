"""Codecs: turn a tenant's state into a snapshot payload and back.

msgpack (the default) packs plain data: None, bool, int, float, str, bytes, list and dict
natively (int keys allowed), plus the extension types below. It packs with strict types, so
only the exact types listed here are accepted: a subclass (an IntEnum, a defaultdict, a
namedtuple) would come back as its base type after a restore, a bug that only shows after a
swap-out, so it is refused at checkpoint time instead (CodecError names the type). The same
state always packs to the same bytes, whatever PYTHONHASHSEED: sets are written sorted.

Extension type codes. They are part of the snapshot format: never renumber or reuse one.
Integers are big-endian.

    code  type                 ext data
    1     datetime.datetime    ">HBBBBBIB": year, month, day, hour, minute, second,
                               microsecond, flags (bit 0 fold, bit 1 aware); when aware,
                               then ">q" UTC offset in microseconds. A tz-aware value comes
                               back with a fixed-offset datetime.timezone (UTC for offset 0):
                               the instant and offset are kept, a zone's name and rules are
                               not. A tzinfo whose utcoffset() is None counts as naive.
    2     datetime.date        ">HBB": year, month, day
    3     datetime.time        ">BBBIB": hour, minute, second, microsecond, flags (as in 1);
                               when aware, then ">q" UTC offset in microseconds
    4     datetime.timedelta   ">iII": days, seconds, microseconds
    5     decimal.Decimal      ASCII str(value) (keeps precision, sign of zero, NaN, Infinity)
    6     uuid.UUID            the 16 bytes
    7     set                  a msgpack array of the elements, sorted (below)
    8     frozenset            as 7
    9     tuple                a msgpack array of the elements (tuples nest, and stay tuples
                               as dict keys and inside sets)
    10    int                  an int outside msgpack's 64-bit range: two's complement,
                               signed, minimal length

Set order: sorted by value when all elements are str, all int or all bytes (fast, and
readable in a dump); otherwise sorted by each element's packed bytes, which is a total order
for any mix of types.

Nesting: sets, frozensets and tuples nest at most MAX_EXT_NESTING (32) deep inside each other
(lists and dicts in between do not count). The elements of each are a nested msgpack call, and
the C unpacker takes about 42 KiB of C stack per call: a payload of under 1 KiB nesting 200
tuples overflowed an 8 MiB stack and killed the process (SIGSEGV). dumps refuses deeper
nesting and loads raises CodecError on it, so a decode needs at most about 1.4 MiB of stack.

pickle (opt-in, protocol 5) packs arbitrary object graphs. Unpickling runs code named by its
input, so PickleCodec.loads must only see payloads whose checksum has been verified in a file
this deployment wrote (snapshots.format.read_snapshot and load_state do that);
get_codec(..., allow_pickle=False) lets a caller refuse pickle outright.

Unverified input: MsgpackCodec.safe_on_unverified_input is True, so snapshots.format.load_state
decodes a msgpack payload while its checksum is computed (and drops the state if it fails).
That is safe because decoding msgpack runs no code named by the input (the extension types
above build plain values) and allocates in proportion to the input: msgpack.unpackb's
default limits are the buffer's length (max_str_len, max_bin_len, max_array_len,
max_ext_len; max_map_len half of it), a str, bin or ext longer than the bytes left fails
before it is allocated, and msgpack >= 1.2.4 preallocates at most 10,000 slots per array,
1,024 containers deep, so damaged bytes cost at most about 80 MB of list slots beyond what
a valid payload of that size could decode to. Earlier versions preallocate as many slots as
an array header claims (up to the buffer's length, 8 bytes each, at every level), so with
them (MSGPACK_UNVERIFIED_OK false) a msgpack payload is verified before it is decoded.
PickleCodec says False: it only ever sees verified bytes.

Both codecs' loads pause the garbage collector: building a large graph with it on triggers
collections that find nothing and roughly double the load time. The objects are all young
when it resumes, so its next collection would walk every one of them (about 35 ms per million
objects here, on the cold-start path). For a payload of FREEZE_MIN_BYTES or more, loads
therefore calls gc.freeze() just before it re-enables the collector: every object tracked at
that point (the new state, and whatever else was young) moves to the permanent generation,
which the collector never walks, and forked children keep its copy-on-write pages shared.
Frozen objects are still freed by reference counting when their last reference goes (a
command that deletes a record frees it as before); only a reference cycle among them waits
for gc.unfreeze(). A msgpack state has no cycles; a pickled graph may, and a tenant runtime
freezes its restored state anyway.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import gc
import pickle
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import msgpack

from snapshots.errors import CodecError, UnsafeCodec

DEFAULT_CODEC = "msgpack"
CODEC_NAMES = ("msgpack", "pickle")

EXT_DATETIME = 1
EXT_DATE = 2
EXT_TIME = 3
EXT_TIMEDELTA = 4
EXT_DECIMAL = 5
EXT_UUID = 6
EXT_SET = 7
EXT_FROZENSET = 8
EXT_TUPLE = 9
EXT_BIGINT = 10

Buffer = bytes | bytearray | memoryview


class Codec(Protocol):
    @property
    def name(self) -> str: ...

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: Buffer) -> Any: ...


FREEZE_MIN_BYTES = 1024 * 1024
# The first msgpack release that caps preallocation (see the module docstring).
MSGPACK_UNVERIFIED_OK: bool = msgpack.version >= (1, 2, 4)


@contextmanager
def gc_paused(*, freeze: bool = False) -> Iterator[None]:
    """Disable the garbage collector, then restore whatever state it was in.

    With freeze, a block that ends without an exception calls gc.freeze() before the
    collector is re-enabled (see the module docstring). Nested inside another pause, this
    does nothing at the end: the outer block decides.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    completed = False
    try:
        yield
        completed = True
    finally:
        if was_enabled:
            if freeze and completed:
                gc.freeze()
            gc.enable()


def _worth_freezing(data: Buffer) -> bool:
    return memoryview(data).nbytes >= FREEZE_MIN_BYTES


# --- msgpack encoding ---------------------------------------------------------------------

_DATETIME = struct.Struct(">HBBBBBIB")
_DATE = struct.Struct(">HBB")
_TIME = struct.Struct(">BBBIB")
_TIMEDELTA = struct.Struct(">iII")
_OFFSET = struct.Struct(">q")
_FOLD = 1
_AWARE = 2
_ONE_US = dt.timedelta(microseconds=1)


MAX_EXT_NESTING = 32
_TOO_DEEP = (f"sets, frozensets and tuples nested more than {MAX_EXT_NESTING} deep (decoding "
             "them would overflow the C stack)")


def _pack(obj: Any, depth: int = 0) -> bytes:
    """depth: how many sets, frozensets and tuples obj is inside."""
    packed: bytes = msgpack.packb(
        obj, default=_DEFAULTS[depth], strict_types=True, use_bin_type=True, datetime=False
    )
    return packed


def _default(depth: int, obj: Any) -> msgpack.ExtType:
    encoder = _ENCODERS.get(type(obj))
    if encoder is not None:
        return encoder(obj)
    container = _CONTAINER_ENCODERS.get(type(obj))
    if container is not None:
        if depth >= MAX_EXT_NESTING:
            raise CodecError(f"msgpack codec: {_TOO_DEEP}")
        return container(obj, depth + 1)
    kind = type(obj)
    raise TypeError(
        f"cannot encode {kind.__module__}.{kind.__qualname__}: it takes "
        "None, bool, int, float, str, bytes, list, dict, datetime, date, time, timedelta, "
        "Decimal, UUID, set, frozenset and tuple, exact types only (a subclass would come "
        "back as its base type after a restore); convert the value or use the pickle codec"
    )


def _offset_us(offset: dt.timedelta | None) -> tuple[int, bytes]:
    if offset is None:
        return 0, b""
    return _AWARE, _OFFSET.pack(offset // _ONE_US)


def _enc_datetime(o: dt.datetime) -> msgpack.ExtType:
    aware, offset = _offset_us(o.utcoffset())
    head = _DATETIME.pack(
        o.year, o.month, o.day, o.hour, o.minute, o.second, o.microsecond, o.fold | aware
    )
    return msgpack.ExtType(EXT_DATETIME, head + offset)


def _enc_date(o: dt.date) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_DATE, _DATE.pack(o.year, o.month, o.day))


def _enc_time(o: dt.time) -> msgpack.ExtType:
    aware, offset = _offset_us(o.utcoffset())
    head = _TIME.pack(o.hour, o.minute, o.second, o.microsecond, o.fold | aware)
    return msgpack.ExtType(EXT_TIME, head + offset)


def _enc_timedelta(o: dt.timedelta) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_TIMEDELTA, _TIMEDELTA.pack(o.days, o.seconds, o.microseconds))


def _enc_decimal(o: decimal.Decimal) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_DECIMAL, str(o).encode("ascii"))


def _enc_uuid(o: uuid.UUID) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_UUID, o.bytes)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _sorted_elements(o: set[Any] | frozenset[Any], depth: int) -> bytes:
    # Set iteration order follows string hashes, which PYTHONHASHSEED randomises; sorting
    # makes a checkpoint of unchanged state byte-identical.
    for kind in (str, int, bytes):
        if all(type(x) is kind for x in o):
            return _pack(sorted(o), depth)
    packed = sorted(_pack(x, depth) for x in o)
    return _array_header(len(packed)) + b"".join(packed)


def _enc_set(o: set[Any], depth: int) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_SET, _sorted_elements(o, depth))


def _enc_frozenset(o: frozenset[Any], depth: int) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_FROZENSET, _sorted_elements(o, depth))


def _enc_tuple(o: tuple[Any, ...], depth: int) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_TUPLE, _pack(list(o), depth))


def _enc_bigint(o: int) -> msgpack.ExtType:
    # msgpack calls default for an exact int only when it overflows 64 bits.
    return msgpack.ExtType(EXT_BIGINT, o.to_bytes(o.bit_length() // 8 + 1, "big", signed=True))


_ENCODERS: dict[type, Callable[[Any], msgpack.ExtType]] = {
    dt.datetime: _enc_datetime,
    dt.date: _enc_date,
    dt.time: _enc_time,
    dt.timedelta: _enc_timedelta,
    decimal.Decimal: _enc_decimal,
    uuid.UUID: _enc_uuid,
    int: _enc_bigint,
}
# Their elements are packed one level deeper (the depth argument).
_CONTAINER_ENCODERS: dict[type, Callable[[Any, int], msgpack.ExtType]] = {
    set: _enc_set,
    frozenset: _enc_frozenset,
    tuple: _enc_tuple,
}
_DEFAULTS = [functools.partial(_default, depth) for depth in range(MAX_EXT_NESTING + 1)]


# --- msgpack decoding ---------------------------------------------------------------------

# One timezone object per offset, shared by every datetime that carries it; the offsets in
# a state are few, and the cap keeps hostile data from growing this without bound.
_TZ_CACHE: dict[int, dt.timezone] = {0: dt.UTC}
_TZ_CACHE_MAX = 1024


def _unpack(data: Buffer, depth: int = 0) -> Any:
    """depth: how many sets, frozensets and tuples data is inside."""
    return msgpack.unpackb(
        data, ext_hook=_EXT_HOOKS[depth], raw=False, use_list=True, strict_map_key=False
    )


def _tz(flags: int, data: bytes, offset_at: int) -> dt.timezone | None:
    if not flags & _AWARE:
        return None
    (offset_us,) = _OFFSET.unpack_from(data, offset_at)
    tz = _TZ_CACHE.get(offset_us)
    if tz is None:
        tz = dt.timezone(dt.timedelta(microseconds=offset_us))
        if len(_TZ_CACHE) < _TZ_CACHE_MAX:
            _TZ_CACHE[offset_us] = tz
    return tz


def _dec_datetime(data: bytes) -> dt.datetime:
    year, month, day, hour, minute, second, micro, flags = _DATETIME.unpack_from(data)
    tz = _tz(flags, data, _DATETIME.size)
    return dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=tz, fold=flags & _FOLD)


def _dec_date(data: bytes) -> dt.date:
    return dt.date(*_DATE.unpack(data))


def _dec_time(data: bytes) -> dt.time:
    hour, minute, second, micro, flags = _TIME.unpack_from(data)
    tz = _tz(flags, data, _TIME.size)
    return dt.time(hour, minute, second, micro, tzinfo=tz, fold=flags & _FOLD)


def _dec_timedelta(data: bytes) -> dt.timedelta:
    days, seconds, micro = _TIMEDELTA.unpack(data)
    return dt.timedelta(days=days, seconds=seconds, microseconds=micro)


def _dec_decimal(data: bytes) -> decimal.Decimal:
    return decimal.Decimal(data.decode("ascii"))


def _dec_uuid(data: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=bytes(data))


def _dec_bigint(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


_DECODERS: dict[int, Callable[[bytes], Any]] = {
    EXT_DATETIME: _dec_datetime,
    EXT_DATE: _dec_date,
    EXT_TIME: _dec_time,
    EXT_TIMEDELTA: _dec_timedelta,
    EXT_DECIMAL: _dec_decimal,
    EXT_UUID: _dec_uuid,
    EXT_BIGINT: _dec_bigint,
}
# Their ext data is a msgpack array of the elements, unpacked one level deeper.
_CONTAINER_TYPES: dict[int, Callable[[list[Any]], Any]] = {
    EXT_SET: set,
    EXT_FROZENSET: frozenset,
    EXT_TUPLE: tuple,
}


def _ext_hook(depth: int, code: int, data: bytes) -> Any:
    decoder = _DECODERS.get(code)
    if decoder is not None:
        return decoder(data)
    container = _CONTAINER_TYPES.get(code)
    if container is None:
        raise CodecError(f"unknown msgpack extension type {code} (written by newer code?)")
    if depth >= MAX_EXT_NESTING:
        raise CodecError(_TOO_DEEP)
    return container(_unpack(data, depth + 1))


_EXT_HOOKS = [functools.partial(_ext_hook, depth) for depth in range(MAX_EXT_NESTING + 1)]


# What a malformed (but checksum-valid, so writer-made) payload can raise while decoding.
_DECODE_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    struct.error,
    decimal.InvalidOperation,
    msgpack.UnpackException,
)


class MsgpackCodec:
    name = "msgpack"
    # Decoding damaged bytes runs no code and stays bounded: see the module docstring.
    safe_on_unverified_input = MSGPACK_UNVERIFIED_OK

    def dumps(self, obj: Any) -> bytes:
        try:
            return _pack(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise CodecError(f"msgpack codec: {exc}") from exc

    def loads(self, data: Buffer) -> Any:
        with gc_paused(freeze=_worth_freezing(data)):
            try:
                return _unpack(data)
            except _DECODE_ERRORS as exc:
                raise CodecError(f"payload does not decode as msgpack: {exc}") from exc


class PickleCodec:
    """Pickle protocol 5, for arbitrary object graphs.

    loads runs code named by the data: call it only on a payload whose checksum has been
    verified in a file this deployment wrote (read_snapshot's result, or load_state's
    verified private copy), never on bytes from a request or a peer that were not verified
    first.
    """

    name = "pickle"
    safe_on_unverified_input = False  # unpickling runs code named by its input

    def dumps(self, obj: Any) -> bytes:
        try:
            return pickle.dumps(obj, protocol=5)
        except (pickle.PicklingError, TypeError, AttributeError, RecursionError) as exc:
            raise CodecError(f"pickle codec cannot encode the state: {exc}") from exc

    def loads(self, data: Buffer) -> Any:
        with gc_paused(freeze=_worth_freezing(data)):
            try:
                return pickle.loads(data)
            # Unpickling calls the app's own constructors, which may raise anything; every
            # such failure means this code cannot restore this state.
            except Exception as exc:
                raise CodecError(f"payload does not unpickle: {exc!r}") from exc


_CODECS: dict[str, Codec] = {"msgpack": MsgpackCodec(), "pickle": PickleCodec()}


def get_codec(name: str, *, allow_pickle: bool = True) -> Codec:
    """The codec called name; CodecError if unknown, UnsafeCodec for a refused pickle."""
    if name == "pickle" and not allow_pickle:
        raise UnsafeCodec(
            "the pickle codec is not allowed here: unpickling runs code from its input"
        )
    try:
        return _CODECS[name]
    except KeyError:
        raise CodecError(
            f"unknown codec {name!r}; known codecs: {', '.join(CODEC_NAMES)}"
        ) from None
