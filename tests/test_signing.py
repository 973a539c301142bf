"""The admin API signing scheme (switchboard.signing) against the Contract in DESIGN.md."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from switchboard import nonces
from switchboard.errors import ConfigError
from switchboard.nonces import SeenNonces
from switchboard.signing import (
    AuthError,
    KeyFileError,
    Verifier,
    create_key,
    ensure_key,
    load_key,
    sign_request,
)

KEY = b"0123456789abcdef0123456789abcdef"
NOW = 1_700_000_000


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: FakeClock | None = None, **kwargs: int) -> Verifier:
    return Verifier(KEY, window_s=300, clock=clock or FakeClock(), **kwargs)


def signed(
    method: str = "POST",
    path_qs: str = "/v1/tenants",
    body: bytes = b'{"name": "acme"}',
    *,
    key: bytes = KEY,
    timestamp: int = NOW,
    nonce: str | None = None,
) -> dict[str, str]:
    return sign_request(key, method, path_qs, body, timestamp=timestamp, nonce=nonce)


def reason_of(excinfo: pytest.ExceptionInfo[AuthError]) -> str:
    return excinfo.value.reason


def test_known_answer_vector_matches_the_contract_computed_independently() -> None:
    body = b'{"name":"acme"}'
    headers = sign_request(
        KEY, "post", "/v1/tenants?dry=1&x=%2F", body, timestamp=NOW, nonce="abcdef0123456789"
    )
    message = (
        b"POST\n/v1/tenants?dry=1&x=%2F\n1700000000\nabcdef0123456789\n"
        + hashlib.sha256(body).hexdigest().encode()
    )
    expected = hmac.new(KEY, message, hashlib.sha256).hexdigest()
    assert headers == {
        "X-Switchboard-Timestamp": "1700000000",
        "X-Switchboard-Nonce": "abcdef0123456789",
        "Authorization": f"Switchboard-HMAC-SHA256 {expected}",
    }
    # The empty body's digest is part of the message too.
    empty = sign_request(KEY, "GET", "/v1/tenants", b"", timestamp=NOW, nonce="n" * 16)
    digest = hashlib.sha256(b"").hexdigest().encode()
    message = b"GET\n/v1/tenants\n1700000000\n" + b"n" * 16 + b"\n" + digest
    assert empty["Authorization"].split()[1] == hmac.new(KEY, message, hashlib.sha256).hexdigest()


def test_default_timestamp_and_nonce_are_fresh_and_random() -> None:
    first = sign_request(KEY, "GET", "/v1/tenants", b"")
    second = sign_request(KEY, "GET", "/v1/tenants", b"")
    assert len(first["X-Switchboard-Nonce"]) >= 16
    assert first["X-Switchboard-Nonce"] != second["X-Switchboard-Nonce"]
    Verifier(KEY).verify("GET", "/v1/tenants", first, b"")  # the real clock accepts it


def test_a_correct_request_passes_once_and_its_replay_is_refused() -> None:
    v = verifier()
    headers = signed()
    v.verify("POST", "/v1/tenants", headers, b'{"name": "acme"}')
    with pytest.raises(AuthError) as excinfo:
        v.verify("POST", "/v1/tenants", headers, b'{"name": "acme"}')
    assert reason_of(excinfo) == "replayed nonce"
    assert str(excinfo.value).startswith("replayed nonce")


def test_header_names_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in signed().items()}
    verifier().verify("POST", "/v1/tenants", headers, b'{"name": "acme"}')


@pytest.mark.parametrize("offset", [-301, 301, -100_000, 100_000])
def test_stale_timestamps_are_refused_in_both_directions(offset: int) -> None:
    with pytest.raises(AuthError) as excinfo:
        verifier().verify("POST", "/v1/tenants", signed(timestamp=NOW + offset),
                          b'{"name": "acme"}')
    assert reason_of(excinfo) == "stale timestamp"


@pytest.mark.parametrize("offset", [-300, 300])
def test_the_window_edges_are_accepted(offset: int) -> None:
    verifier().verify("POST", "/v1/tenants", signed(timestamp=NOW + offset), b'{"name": "acme"}')


@pytest.mark.parametrize("missing", ["Authorization", "X-Switchboard-Timestamp",
                                     "X-Switchboard-Nonce"])
def test_a_missing_header_is_a_missing_signature(missing: str) -> None:
    headers = signed()
    del headers[missing]
    with pytest.raises(AuthError) as excinfo:
        verifier().verify("POST", "/v1/tenants", headers, b'{"name": "acme"}')
    assert reason_of(excinfo) == "missing signature"
    assert missing in str(excinfo.value)


def test_another_authorization_scheme_is_a_missing_signature() -> None:
    headers = signed()
    headers["Authorization"] = "Bearer abc"
    with pytest.raises(AuthError) as excinfo:
        verifier().verify("POST", "/v1/tenants", headers, b'{"name": "acme"}')
    assert reason_of(excinfo) == "missing signature"


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Authorization", "Switchboard-HMAC-SHA256 nothex"),
        ("Authorization", "Switchboard-HMAC-SHA256 " + "a" * 63),
        ("X-Switchboard-Timestamp", "1700000000.5"),
        ("X-Switchboard-Timestamp", "-5"),
        ("X-Switchboard-Timestamp", "soon"),
        ("X-Switchboard-Nonce", "x" * 129),
        ("X-Switchboard-Nonce", "sixteen chars ok"),  # spaces are not allowed
    ],
)
def test_malformed_headers_are_refused(header: str, value: str) -> None:
    headers = signed()
    headers[header] = value
    with pytest.raises(AuthError) as excinfo:
        verifier().verify("POST", "/v1/tenants", headers, b'{"name": "acme"}')
    assert reason_of(excinfo) == "malformed signature"


def test_a_nonce_shorter_than_16_characters_is_refused_even_when_signed() -> None:
    headers = signed(nonce="a" * 15)
    with pytest.raises(AuthError) as excinfo:
        verifier().verify("POST", "/v1/tenants", headers, b'{"name": "acme"}')
    assert reason_of(excinfo) == "malformed signature"
    assert "Nonce" in str(excinfo.value)
    verifier().verify("POST", "/v1/tenants", signed(nonce="a" * 16), b'{"name": "acme"}')


def test_a_wrong_key_is_a_bad_signature() -> None:
    with pytest.raises(AuthError) as excinfo:
        verifier().verify("POST", "/v1/tenants", signed(key=b"another key"), b'{"name": "acme"}')
    assert reason_of(excinfo) == "bad signature"


@pytest.mark.parametrize(
    ("method", "path_qs", "body"),
    [
        ("POST", "/v1/tenants", b'{"name": "evil"}'),  # body tampered
        ("POST", "/v1/tenants", b""),  # body dropped
        ("DELETE", "/v1/tenants", b'{"name": "acme"}'),  # method changed
        ("POST", "/v1/tenants/acme", b'{"name": "acme"}'),  # path changed
        ("POST", "/v1/tenants?force=1", b'{"name": "acme"}'),  # query added
    ],
)
def test_any_change_to_the_signed_request_is_a_bad_signature(
    method: str, path_qs: str, body: bytes
) -> None:
    with pytest.raises(AuthError) as excinfo:
        verifier().verify(method, path_qs, signed(), body)
    assert reason_of(excinfo) == "bad signature"


def test_the_query_string_is_covered() -> None:
    headers = signed("GET", "/v1/tenants?limit=10", b"")
    verifier().verify("GET", b"/v1/tenants?limit=10", headers, b"")
    with pytest.raises(AuthError, match="bad signature"):
        verifier().verify("GET", "/v1/tenants?limit=11", headers, b"")


def test_a_bad_signature_does_not_burn_the_nonce() -> None:
    v = verifier()
    good = signed(nonce="shared-nonce-0001")
    forged = signed(key=b"attacker", nonce="shared-nonce-0001")
    with pytest.raises(AuthError, match="bad signature"):
        v.verify("POST", "/v1/tenants", forged, b'{"name": "acme"}')
    v.verify("POST", "/v1/tenants", good, b'{"name": "acme"}')


def test_nonces_are_forgotten_after_the_window() -> None:
    clock = FakeClock()
    v = verifier(clock)
    for i in range(10):
        v.verify("GET", "/", signed("GET", "/", b"", nonce=f"nonce-{i:011d}"), b"")
    assert len(v) == 10
    clock.now = NOW + 301
    v.verify("GET", "/", signed("GET", "/", b"", timestamp=NOW + 301), b"")
    assert len(v) == 1


def test_the_nonce_cache_is_capped_without_letting_replays_through() -> None:
    clock = FakeClock()
    v = verifier(clock, max_nonces=3)
    old = [signed("GET", "/", b"", timestamp=NOW - 10 + i) for i in range(5)]
    for headers in old:
        v.verify("GET", "/", headers, b"")
    assert len(v) == 3
    # The two oldest were evicted; replaying them must still fail, as stale.
    for headers in old:
        with pytest.raises(AuthError) as excinfo:
            v.verify("GET", "/", headers, b"")
        assert reason_of(excinfo) in {"replayed nonce", "stale timestamp"}
    # A fresh request still passes.
    v.verify("GET", "/", signed("GET", "/", b""), b"")


def test_create_key_is_private_random_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "data" / "admin.key"
    key = create_key(path)
    assert len(key) == 64 and bytes.fromhex(key.decode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    assert create_key(tmp_path / "other.key") != key
    with pytest.raises(KeyFileError, match="already exists"):
        create_key(path)
    assert load_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["admin.key"]  # no temp file left


def test_create_key_does_not_loosen_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    path.write_bytes(b"secret\n")
    os.chmod(path, 0o400)
    with pytest.raises(KeyFileError):
        create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert path.read_bytes() == b"secret\n"


def test_ensure_key_creates_once_then_loads(tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    key = ensure_key(path)
    assert ensure_key(path) == key


def test_load_key_strips_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "admin.key"
    path.write_bytes(b"  s3cret \r\n")
    assert load_key(path) == b"s3cret"


def test_load_key_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no admin key at"):
        load_key(tmp_path / "missing.key")
    empty = tmp_path / "empty.key"
    empty.write_bytes(b" \n")
    with pytest.raises(KeyFileError, match="is empty"):
        load_key(empty)
    with pytest.raises(KeyFileError, match="cannot read admin key"):
        load_key(tmp_path)  # a directory


# --- verification in steps, as the admin API does it -----------------------------------------


def test_the_headers_are_checked_alone_and_a_race_for_one_nonce_admits_one_request() -> None:
    v = verifier()
    body = b'{"name": "acme"}'
    headers = signed(body=body)
    digest = hashlib.sha256(body).hexdigest()
    # Two copies of one request both pass the header checks while neither is accepted...
    first, second = v.check_headers(headers), v.check_headers(headers)
    v.check_signature(first, "POST", "/v1/tenants", digest)
    v.check_signature(second, "POST", "/v1/tenants", digest)
    v.accept(first)
    # ...and only the first to be accepted goes on.
    with pytest.raises(AuthError, match=r"^replayed nonce: nonce seen"):
        v.accept(second)
    with pytest.raises(AuthError, match=r"^replayed nonce"):
        v.check_headers(headers)
    with pytest.raises(AuthError, match=r"^bad signature"):
        v.check_signature(v.check_headers(signed()), "POST", "/v1/tenants",
                          hashlib.sha256(b"tampered").hexdigest())


# --- nonces on disk (switchboard/nonces.py) --------------------------------------------------


def durable_verifier(path: Path, clock: FakeClock, max_nonces: int = 100) -> Verifier:
    store = SeenNonces.open(path, now=clock(), max_nonces=max_nonces)
    return Verifier(KEY, window_s=300, clock=clock, nonces=store)


def test_accepted_nonces_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "nonces"
    clock = FakeClock()
    headers = signed("DELETE", "/v1/tenants/acme", b"")
    durable_verifier(path, clock).verify("DELETE", "/v1/tenants/acme", headers, b"")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    clock.now += 299  # still inside the window
    restarted = durable_verifier(path, clock)
    with pytest.raises(AuthError, match=r"^replayed nonce"):
        restarted.verify("DELETE", "/v1/tenants/acme", headers, b"")
    clock.now += 2  # past it: the replay is stale, and the record has been dropped
    with pytest.raises(AuthError, match=r"^stale timestamp"):
        durable_verifier(path, clock).verify("DELETE", "/v1/tenants/acme", headers, b"")
    assert path.read_bytes() == b"switchboard-nonces 1\n"


def test_a_torn_last_record_is_skipped_and_later_records_still_count(tmp_path: Path) -> None:
    path = tmp_path / "nonces"
    clock = FakeClock()
    v = durable_verifier(path, clock)
    good = signed("GET", "/", b"", nonce="first-nonce-0001")
    v.verify("GET", "/", good, b"")
    with open(path, "ab") as f:  # a crash in the middle of the next append
        f.write(b"N 1700000300 second-nonc")
    v = durable_verifier(path, clock)
    later = signed("GET", "/", b"", nonce="third-nonce-0003")
    v.verify("GET", "/", later, b"")
    v = durable_verifier(path, clock)
    for headers in (good, later):
        with pytest.raises(AuthError, match=r"^replayed nonce"):
            v.verify("GET", "/", headers, b"")
    v.verify("GET", "/", signed("GET", "/", b"", nonce="second-nonce-002"), b"")


def test_the_floor_raised_by_the_cap_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "nonces"
    clock = FakeClock()
    v = durable_verifier(path, clock, max_nonces=2)
    old = [signed("GET", "/", b"", timestamp=NOW - 10 + i) for i in range(4)]
    for headers in old:
        v.verify("GET", "/", headers, b"")
    v = durable_verifier(path, clock, max_nonces=2)
    assert len(v) == 2
    for headers in old:  # the two forgotten early are refused as stale, the others as seen
        with pytest.raises(AuthError) as excinfo:
            v.verify("GET", "/", headers, b"")
        assert reason_of(excinfo) in {"replayed nonce", "stale timestamp"}
    v.verify("GET", "/", signed("GET", "/", b""), b"")


def test_the_nonce_file_is_compacted_as_records_expire(tmp_path: Path) -> None:
    path = tmp_path / "nonces"
    clock = FakeClock()
    store = SeenNonces.open(path, now=clock())
    v = Verifier(KEY, window_s=10, clock=clock, nonces=store)
    requests = nonces.COMPACT_MIN_RECORDS + 200
    for i in range(requests):
        clock.now = NOW + i  # one request a second: about 10 live at any time
        v.verify("GET", "/", signed("GET", "/", b"", timestamp=NOW + i), b"")
    assert 10 <= len(v) <= 12
    assert path.read_bytes().count(b"\n") < 300  # rewritten with the live ones, then appended


def test_a_file_that_is_not_a_nonce_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nonces"
    path.write_bytes(b"something else\n")
    with pytest.raises(ConfigError, match="not a switchboard nonce file"):
        SeenNonces.open(path)
