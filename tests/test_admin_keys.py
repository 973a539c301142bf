"""signing.AdminKeys and the Verifier with two keys, in-process with a fake clock: a request
signed with either key passes while `admin.key.next` exists; the files are looked at again at
most once a second; a `.next` that is not private is ignored; a main key that goes away keeps
the last one read. (tests/test_admin_api_docs.py does the same rotation against a real router.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from switchboard.signing import (
    KEY_RECHECK_S,
    AdminKeys,
    AuthError,
    KeyFileError,
    Verifier,
    create_key,
    next_key_path,
    sign_request,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def signed_by(key: bytes, verifier: Verifier) -> bool:
    headers = sign_request(key, "GET", "/v1/tenants", b"")
    try:
        verifier.verify("GET", "/v1/tenants", headers, b"")
    except AuthError as exc:
        assert exc.reason == "bad signature"
        return False
    return True


def write_private(path: Path, key: bytes) -> None:
    path.write_bytes(key + b"\n")
    path.chmod(0o600)


def test_both_keys_until_the_old_one_is_retired(tmp_path: Path) -> None:
    main = tmp_path / "admin.key"
    old = create_key(main)
    new = b"b" * 64
    clock = Clock()
    keys = AdminKeys(main, clock=clock)
    verifier = Verifier(keys)
    assert keys.current() == (old,)
    assert signed_by(old, verifier) and not signed_by(new, verifier)

    write_private(next_key_path(main), new)
    assert next_key_path(main) == tmp_path / "admin.key.next"
    assert not signed_by(new, verifier)  # not looked at again within the second
    clock.now += KEY_RECHECK_S
    assert keys.current() == (old, new)
    assert signed_by(new, verifier) and signed_by(old, verifier)

    os.replace(next_key_path(main), main)  # retire the old key
    clock.now += KEY_RECHECK_S
    assert keys.current() == (new,)
    assert signed_by(new, verifier) and not signed_by(old, verifier)


def test_a_next_key_others_can_read_is_ignored(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    main = tmp_path / "admin.key"
    old = create_key(main)
    clock = Clock()
    keys = AdminKeys(main, clock=clock)
    next_file = next_key_path(main)
    next_file.write_bytes(b"c" * 64)
    next_file.chmod(0o644)
    clock.now += KEY_RECHECK_S
    assert keys.current() == (old,)
    assert "ignoring the next admin key" in caplog.text and "0644" in caplog.text

    next_file.chmod(0o600)  # a chmod alone is noticed (ctime)
    clock.now += KEY_RECHECK_S
    assert keys.current() == (old, b"c" * 64)

    next_file.write_bytes(b"  \n")  # empty: ignored too
    clock.now += KEY_RECHECK_S
    assert keys.current() == (old,)


def test_a_vanished_main_key_keeps_the_last_one(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    main = tmp_path / "admin.key"
    old = create_key(main)
    clock = Clock()
    keys = AdminKeys(main, clock=clock)
    main.unlink()
    clock.now += KEY_RECHECK_S
    assert keys.current() == (old,)
    assert "still accepting the key read before" in caplog.text


def test_no_main_key_at_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no admin key at"):
        AdminKeys(tmp_path / "admin.key")
