"""Settings: TOML file, environment overrides, one readable line for a bad setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.errors import UserError
from gateway.settings import GatewaySettings, load_settings

REPO = Path(__file__).resolve().parents[2]


class TestSettings:
    def test_shipped_config_shows_the_defaults(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """configs/gateway.toml holds exactly the defaults."""
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
        assert load_settings(REPO / "configs" / "gateway.toml") == GatewaySettings()

    def test_environment_overrides_file(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """DEFED_MQTT__PORT wins over the file and leaves the group's other settings alone."""
        config = tmp_path / "g.toml"
        config.write_text('[mqtt]\nhost = "broker.lan"\nport = 1884\n')
        monkeypatch.setenv("DEFED_MQTT__PORT", "8883")
        settings = load_settings(config)
        assert (settings.mqtt.host, settings.mqtt.port) == ("broker.lan", 8883)

    def test_audit_defaults_to_sqlite_in_state_dir(self, tmp_path: Path) -> None:
        """Without a URL the audit log is a SQLite file in the state directory."""
        assert GatewaySettings(state_dir=tmp_path).audit_url == f"sqlite:///{tmp_path}/audit.sqlite3"

    def test_model_cache_defaults_to_systemd_cache_directory_else_state_dir(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """ONNX Runtime's graph goes to $CACHE_DIRECTORY under systemd, else state_dir/cache."""
        monkeypatch.delenv("CACHE_DIRECTORY", raising=False)
        assert GatewaySettings(state_dir=tmp_path).model_cache_dir == tmp_path / "cache"
        monkeypatch.setenv("CACHE_DIRECTORY", "/var/cache/defed")
        assert GatewaySettings(state_dir=tmp_path).model_cache_dir == Path("/var/cache/defed")
        chosen = GatewaySettings(state_dir=tmp_path, model={"cache_dir": tmp_path / "m"})  # type: ignore[arg-type]
        assert chosen.model_cache_dir == tmp_path / "m"

    def test_shared_group_prefixes_the_subscription(self) -> None:
        """A shared group subscribes to $share/{group}/{filter}."""
        settings = GatewaySettings(mqtt={"shared_group": "fleet"})  # type: ignore[arg-type]
        assert settings.frame_topic == "$share/fleet/cameras/+/frames"

    @pytest.mark.parametrize(("toml", "named"), [
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ("[mqtt]\nhots = 'x'\n", "mqtt.hots"),
        ("[mqtt]\ninput_topic = 'cameras/#'\n", "mqtt.input_topic"),
        ("[batching]\nmax_batch = 0\n", "batching.max_batch"),
        ("[model]\ndevice = 'tpu'\n", "model.device"),
        ("[model]\nbackend = 'tensorrt'\n", "model.backend"),
        ("[log]\nformat = 'xml'\n", "log.format"),
        ("[review]\nlisten = '8088'\n", "review.listen"),
        ("[review]\npage_size = 0\n", "review.page_size"),
        ("[review]\npassword = ''\n", "review.password"),
    ])
    def test_bad_setting_is_one_line_naming_it(self, tmp_path: Path, toml: str, named: str) -> None:
        """An invalid setting raises a UserError whose single line names the setting."""
        config = tmp_path / "g.toml"
        config.write_text(toml)
        with pytest.raises(UserError) as caught:
            load_settings(config)
        assert named in str(caught.value) and "\n" not in str(caught.value)

    def test_cli_exits_2_on_bad_setting(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`defed serve` with a bad setting prints one line and exits 2, before loading any model."""
        config = tmp_path / "g.toml"
        config.write_text("[batching]\nmax_wait_ms = -1\n")
        assert main(["serve", "--config", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("defed: invalid setting batching.max_wait_ms") and "\n" not in err

    def test_cli_exits_2_on_missing_config(self, tmp_path: Path) -> None:
        """A config path that does not exist is a bad input, exit 2."""
        assert main(["serve", "--config", str(tmp_path / "nope.toml")]) == 2


class TestServeCommand:
    def test_unknown_bundle_exits_2_naming_the_setting(self, tmp_path: Path) -> None:
        """A model.bundle that is neither a directory nor a shipped bundle is a bad setting: exit 2."""
        config = tmp_path / "g.toml"
        config.write_text(f'state_dir = "{tmp_path}"\n[model]\nbundle = "{tmp_path}/nope"\n[metrics]\nlisten = ""\n')
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines()[-1].startswith("defed: model.bundle: cannot load")
