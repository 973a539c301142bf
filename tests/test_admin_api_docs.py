"""docs/admin-api.md for real: its curl + openssl example, run as written against a real
`switchboard serve`, and key rotation with `admin.key.next` (both keys accepted until the old
one is retired), driven by the CLI in table and --json form and by openssl-made signatures.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from harness import wait_until
from tests.conftest import ROOT, Router

MakeRouter = Callable[..., Router]
DOCS = ROOT / "docs" / "admin-api.md"


def docs_example() -> str:
    blocks = re.findall(r"```sh\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert len(blocks) == 1, "docs/admin-api.md should hold one sh example"
    return str(blocks[0])


def openssl_signed_get(admin_url: str, key: bytes, target: str) -> httpx.Response:
    """GET `target`, signed with `openssl dgst -sha256 -hmac` as the docs say."""
    timestamp, nonce = str(int(time.time())), secrets.token_hex(16)
    empty_sha = subprocess.run(["openssl", "dgst", "-sha256", "-r"], input=b"",
                               capture_output=True, check=True).stdout.split()[0].decode()
    message = "\n".join(["GET", target, timestamp, nonce, empty_sha]).encode()
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", key.decode(), "-r"],
                               input=message, capture_output=True, check=True
                               ).stdout.split()[0].decode()
    headers = {"X-Switchboard-Timestamp": timestamp, "X-Switchboard-Nonce": nonce,
               "Authorization": f"Switchboard-HMAC-SHA256 {signature}"}
    return httpx.get(admin_url + target, headers=headers, timeout=30, trust_env=False)


def test_the_curl_and_openssl_example_works(make_router: MakeRouter, tmp_path: Path) -> None:
    router = make_router().start()
    script = docs_example().replace("switchboard-data/admin.key", str(router.key_file))
    script = script.replace("http://127.0.0.1:8001", router.admin_url)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    listed, created = [json.loads(line) for line in result.stdout.replace("}{", "}\n{")
                       .splitlines()]
    assert listed == {"tenants": []}
    assert (created["name"], created["state"]) == ("acme", "stopped")
    assert [t["name"] for t in router.ls()] == ["acme"]

    # The worked string-to-sign of the docs, signed by openssl from Python too.
    answer = openssl_signed_get(router.admin_url, router.key_file.read_bytes().strip(),
                                "/v1/tenants/acme")
    assert answer.status_code == 200 and answer.json()["name"] == "acme"
    assert "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" in DOCS.read_text()


def test_a_second_key_for_rotation(make_router: MakeRouter, tmp_path: Path) -> None:
    router = make_router().start()
    router.create("acme")
    old_key = router.key_file.read_bytes().strip()
    next_file = router.data_dir / "admin.key.next"
    copy_of_old = tmp_path / "old.key"
    copy_of_old.write_bytes(old_key + b"\n")

    def cli_with(key_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return router.cli("ls", "--key-file", str(key_file), *args, check=False)

    # No .next file: a key nobody installed is refused, with the CLI's hint.
    new_key = secrets.token_hex(32).encode()
    stray = tmp_path / "new.key"
    stray.write_bytes(new_key + b"\n")
    refused = cli_with(stray)
    assert refused.returncode == 1 and "bad signature" in refused.stderr

    # A .next file other users could read is ignored.
    next_file.write_bytes(new_key + b"\n")
    next_file.chmod(0o644)
    time.sleep(1.2)  # past the router's once-a-second look, so it has seen the file
    assert cli_with(next_file).returncode == 1
    assert "ignoring the next admin key" in router.log()

    # Made private: both keys work, in table and --json form.
    next_file.chmod(0o600)
    wait_until(lambda: cli_with(next_file).returncode == 0, 10, "the next key accepted")
    assert cli_with(next_file).stdout.splitlines()[1].split()[0] == "acme"
    assert [t["name"] for t in json.loads(cli_with(next_file, "--json").stdout)] == ["acme"]
    assert json.loads(cli_with(copy_of_old, "--json").stdout)[0]["name"] == "acme"
    assert openssl_signed_get(router.admin_url, new_key, "/v1/tenants").status_code == 200
    assert openssl_signed_get(router.admin_url, old_key, "/v1/tenants").status_code == 200

    # Retire the old key: mv admin.key.next admin.key.
    os.replace(next_file, router.key_file)
    wait_until(lambda: cli_with(copy_of_old).returncode == 1, 10, "the old key refused")
    retired = cli_with(copy_of_old, "--json")
    assert (retired.returncode, retired.stdout) == (1, "")
    assert "bad signature" in retired.stderr
    assert openssl_signed_get(router.admin_url, old_key, "/v1/tenants").status_code == 401
    assert [t["name"] for t in json.loads(cli_with(router.key_file, "--json").stdout)] == [
        "acme"]


def test_the_docs_list_every_route() -> None:
    source = (ROOT / "switchboard" / "admin.py").read_text()
    routes = re.findall(r'Route\((?:"([^"]+)"|tenant(?: \+ "([^"]*)")?), [\w.]+, '
                        r'methods=\["(\w+)"\]\)', source)
    assert len(routes) >= 12
    documented = DOCS.read_text()
    for plain, suffix, method in routes:
        path = plain or "/v1/tenants/{name}" + suffix
        assert f"| `{method} {path}" in documented, (method, path)
