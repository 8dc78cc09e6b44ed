"""systemd/defed-gateway.service: the directives DESIGN §7 asks for, and `systemd-analyze` accepts it."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from gateway.settings import GatewaySettings

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "defed-gateway.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def directives(text: str) -> dict[str, list[str]]:
    """`Section.Key` → every value it is given, in order (systemd keys may repeat)."""
    found: dict[str, list[str]] = defaultdict(list)
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found[f"{section}.{key.strip()}"].append(value.strip())
    return found


def seconds(value: str) -> float:
    """A systemd time span: `30`, `30s`, `2min`, `1min 30s`."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    return sum(float(n) * units[u] for n, u in parts)


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's `defed`, which verify insists exists."""
    defed = Path(sys.executable).with_name("defed")
    assert defed.is_file(), "the project is not installed in this environment"
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/defed/venv/bin/defed", str(defed)))
    return copy


def verify(unit: Path) -> tuple[int, list[str]]:
    """Exit code and the complaints about this unit (verify exits 0 on a mere parse warning)."""
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    return done.returncode, [line for line in done.stderr.splitlines() if unit.name in line]


class TestDirectives:
    unit = directives(UNIT.read_text())

    def value(self, key: str) -> str:
        values = self.unit.get(f"Service.{key}")
        assert values, f"{key}= is missing"
        return values[-1]

    def test_notify_watchdog_and_restart(self) -> None:
        """Type=notify with only the main process notifying, a watchdog, restart on failure."""
        assert (self.value("Type"), self.value("NotifyAccess"), self.value("Restart")) == (
            "notify",
            "main",
            "on-failure",
        )
        assert seconds(self.value("WatchdogSec")) >= 10
        assert self.value("RestartPreventExitStatus") == "2"  # bad settings: restarting cannot help

    def test_runs_serve_with_the_config_file(self) -> None:
        assert self.value("ExecStart").endswith("defed serve --config /etc/defed/gateway.toml")
        assert self.value("ConfigurationDirectory") == "defed"

    def test_dedicated_user_and_state_directory(self) -> None:
        """A dedicated static user; the state directory (the SQLite file's home) is private to it."""
        assert (self.value("User"), self.value("Group")) == ("defed", "defed")
        assert self.value("StateDirectory") == "defed" and self.value("StateDirectoryMode") == "0750"

    def test_stop_timeout_leaves_room_for_the_drain(self) -> None:
        """SIGKILL comes well after the default drain bound (drain, then closing the connection)."""
        drain = GatewaySettings.model_fields["drain_timeout_s"].default
        assert seconds(self.value("TimeoutStopSec")) >= drain + 10

    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("CapabilityBoundingSet", ""),
            ("RestrictSUIDSGID", "yes"),
            ("RestrictNamespaces", "yes"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectControlGroups", "yes"),
            ("LockPersonality", "yes"),
            ("SystemCallArchitectures", "native"),
        ],
    )
    def test_hardening(self, key: str, expected: str) -> None:
        assert self.value(key) == expected

    def test_network_and_system_calls_are_restricted(self) -> None:
        assert set(self.value("RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
        assert "@system-service" in self.unit["Service.SystemCallFilter"]

    def test_gpu_stays_reachable(self) -> None:
        """/dev is not private; a closed device policy with the NVIDIA devices allowed."""
        assert self.value("PrivateDevices") == "no" and self.value("DevicePolicy") == "closed"
        allowed = " ".join(self.unit["Service.DeviceAllow"])
        assert "char-nvidia-frontend rw" in allowed and "char-nvidia-uvm rw" in allowed and "/dev/nvidiactl" in allowed
        assert "MemoryDenyWriteExecute" not in " ".join(self.unit)  # PyTorch and CUDA JIT-compile


@needs_analyze
class TestSystemdAnalyze:
    def test_verify_passes(self, tmp_path: Path) -> None:
        """`systemd-analyze verify` exits 0 and has nothing to say about the unit."""
        code, complaints = verify(runnable_copy(tmp_path))
        assert code == 0 and complaints == []

    def test_verify_would_notice_a_mistake(self, tmp_path: Path) -> None:
        """The check above is not vacuous: a misspelt value is reported."""
        copy = runnable_copy(tmp_path)
        copy.write_text(copy.read_text().replace("Type=notify", "Type=notifyy"))
        _, complaints = verify(copy)
        assert any("service type" in line for line in complaints)

    def test_security_exposure_is_low(self, tmp_path: Path) -> None:
        """`systemd-analyze security` rates the unit's exposure below 3 of 10 (its "OK" band)."""
        assert ANALYZE is not None
        done = subprocess.run(
            [ANALYZE, "security", "--offline=yes", str(runnable_copy(tmp_path))],
            capture_output=True,
            text=True,
            timeout=60,
        )
        found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
        if found is None:
            pytest.skip(f"this systemd-analyze cannot rate a unit file offline: {done.stderr.strip()[:200]}")
        assert float(found.group(1)) < 3.0, done.stdout
