"""Config precedence and validation: defaults < switchboard.toml < SWITCHBOARD_* < flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchboard.config import Config, HostPort, load
from switchboard.errors import ConfigError


def test_defaults_match_the_contract() -> None:
    config = load(env={}, config_file=None)
    assert config.data_dir == Path("switchboard-data")
    assert config.listen == HostPort("127.0.0.1", 8000)
    assert config.admin_listen == HostPort("127.0.0.1", 8001)
    assert config.app == "examples.dabble:app"
    assert config.idle_timeout_s == 120
    assert config.max_resident == 32
    assert config.max_body_bytes == 10 * 1024 * 1024


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "switchboard.toml"
    toml.write_text('idle_timeout = 30\nmax_resident = 4\nlisten = "127.0.0.1:9000"\n')
    config = load(toml, env={"SWITCHBOARD_MAX_RESIDENT": "6", "SWITCHBOARD_IDLE_TIMEOUT_S": "40"},
                  overrides={"idle_timeout_s": 50, "app": None})
    assert config.listen == HostPort("127.0.0.1", 9000)  # file only
    assert config.max_resident == 6  # env beats file
    assert config.idle_timeout_s == 50  # flag beats env
    assert config.app == Config().app  # a flag left unset (None) changes nothing


@pytest.mark.parametrize(("env", "message"), [
    ({"SWITCHBOARD_MAX_RESIDENT": "many"}, "max_resident"),
    ({"SWITCHBOARD_IDLE_TIMEOUT": "-1"}, "idle_timeout_s"),
    ({"SWITCHBOARD_LISTEN": "nowhere"}, "HOST:PORT"),
    ({"SWITCHBOARD_JOURNAL_FSYNC": "sometimes"}, "journal_fsync"),
    ({"SWITCHBOARD_USE_ZYGOTE": "perhaps"}, "use_zygote"),
    ({"SWITCHBOARD_MAX_RESIDENT": "0"}, "max_resident"),
])
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(env=env)


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    toml = tmp_path / "switchboard.toml"
    toml.write_text("idle_timout = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'idle_timout'"):
        load(toml, env={})


def test_broken_toml_says_so(tmp_path: Path) -> None:
    toml = tmp_path / "switchboard.toml"
    toml.write_text("idle_timeout = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(toml, env={})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "absent.toml", env={})
