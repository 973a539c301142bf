"""`switchboard config show` and the config file's bad input: one setting given in all four
places (default, file, environment, flag) is taken from the highest and reported with its
source, in table and --json form; an unknown key is an error that suggests the closest one;
docs/configuration.md lists every setting with its default.

`main()` runs in this process (capsys sees its output); `serve` is started for real to show it
refuses the same bad file with the same one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness import ROOT, SWITCHBOARD
from ops.cli import main
from switchboard.config import Config

DOCS = ROOT / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith("SWITCHBOARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def show(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[dict[str, dict[str, Any]],
                                                                   dict[str, list[str]]]:
    """`config show` in --json form (by name) and in table form (cells by name)."""
    assert main(["config", "show", *args, "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert main(["config", "show", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SETTING", "VALUE", "SOURCE"]
    table = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    return rows, table


def test_one_key_in_all_four_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rows, table = show(capsys)
    assert rows["idle_timeout_s"] == {"name": "idle_timeout_s", "value": 120.0,
                                      "source": "default"}
    assert table["idle_timeout_s"] == ["120.0", "default"]
    assert len(rows) == len(dataclasses.fields(Config)) - 1  # every setting but `extra`

    (tmp_path / "switchboard.toml").write_text("idle_timeout_s = 10\nmax_resident = 3\n")
    rows, table = show(capsys)
    assert (rows["idle_timeout_s"]["value"], rows["idle_timeout_s"]["source"]) == (
        10.0, "file switchboard.toml")
    assert table["idle_timeout_s"] == ["10.0", "file", "switchboard.toml"]
    assert rows["max_resident"]["source"] == "file switchboard.toml"

    monkeypatch.setenv("SWITCHBOARD_IDLE_TIMEOUT_S", "20")
    rows, table = show(capsys)
    assert (rows["idle_timeout_s"]["value"], rows["idle_timeout_s"]["source"]) == (
        20.0, "env SWITCHBOARD_IDLE_TIMEOUT_S")
    assert table["idle_timeout_s"] == ["20.0", "env", "SWITCHBOARD_IDLE_TIMEOUT_S"]
    assert rows["max_resident"]["source"] == "file switchboard.toml"  # the file still counts

    rows, table = show(capsys, "--idle-timeout", "30")
    assert rows["idle_timeout_s"] == {"name": "idle_timeout_s", "value": 30.0, "source": "flag"}
    assert table["idle_timeout_s"] == ["30.0", "flag"]
    assert rows["listen"] == {"name": "listen", "value": "127.0.0.1:8000", "source": "default"}

    # --config names another file; the unit-less spelling is the same setting.
    other = tmp_path / "other.toml"
    other.write_text("[switchboard]\nidle_timeout = 40\n")
    monkeypatch.delenv("SWITCHBOARD_IDLE_TIMEOUT_S")
    rows, _ = show(capsys, "--config", str(other))
    assert rows["idle_timeout_s"] == {"name": "idle_timeout_s", "value": 40.0,
                                      "source": f"file {other}"}
    assert rows["max_resident"]["source"] == "default"


def test_a_secret_is_not_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if "metrics_token" not in {f.name for f in dataclasses.fields(Config)}:
        pytest.skip("no metrics_token setting in this tree")  # pragma: no cover
    (tmp_path / "switchboard.toml").write_text('metrics_token = "s3cret-token"\n')
    rows, table = show(capsys)
    assert rows["metrics_token"]["value"] == "(set)"
    assert table["metrics_token"][0] == "(set)"


def test_an_unknown_key_says_what_was_meant(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "switchboard.toml").write_text("idle_timout_s = 10\n")
    expected = ("switchboard: error: unknown setting 'idle_timout_s' in switchboard.toml "
                "(did you mean 'idle_timeout_s'?)\n")
    assert main(["config", "show"]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", expected)

    # serve refuses the same file before it starts anything.
    result = subprocess.run(
        [str(SWITCHBOARD), "serve", "--data-dir", str(tmp_path / "data"),
         "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("SWITCHBOARD_")})
    assert (result.returncode, result.stderr) == (1, expected)

    (tmp_path / "switchboard.toml").write_text("zzz_nothing_like_it = 1\n")
    assert main(["config", "show"]) == 1
    assert capsys.readouterr().err == (
        "switchboard: error: unknown setting 'zzz_nothing_like_it' in switchboard.toml\n")


def test_the_docs_list_every_setting_with_its_default() -> None:
    documented = dict(re.findall(r"^\| `(\w+)` \| (.+?) \|", DOCS.read_text(), re.MULTILINE))
    settings = {f.name: f for f in dataclasses.fields(Config) if f.name != "extra"}
    assert set(documented) - {"Key"} == set(settings)
    defaults = Config()
    for name in settings:
        value = getattr(defaults, name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            assert documented[name].startswith(f"`{shown}`"), name
        elif isinstance(value, str):
            assert documented[name] == f'`"{value}"`', name
