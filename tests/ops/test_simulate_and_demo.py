"""`defed simulate` and `defed demo` against a real mosquitto and a real gateway with the shipped bundle."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from gateway_helpers import gateway_settings, running_gateway

from gateway.broker import PrivateBroker, free_port
from gateway.cli import main


def measured(output: str, name: str) -> str:
    """The text after a summary line's name."""
    found = re.search(rf"^{re.escape(name)}\s+(.*)$", output, re.MULTILINE)
    assert found, f"no {name!r} line in:\n{output}"
    return found.group(1)


def counts(output: str) -> tuple[int, int, int, int]:
    """(sent, answered, attacked frames quarantined, attacked frames) from the summary."""
    sent = int(measured(output, "frames sent").split()[0])
    answered = int(measured(output, "answered").split()[0])
    detected, attacked = map(int, re.search(r"\((\d+)/(\d+) attacked", output).groups())  # type: ignore[union-attr]
    return sent, answered, detected, attacked


class TestSimulate:
    def test_every_frame_answered_and_attacks_quarantined(
        self, broker: PrivateBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two cameras for a few seconds, 30% FGSM ε=0.3: every frame answered, ≥ 90% of the attacks caught."""
        settings = gateway_settings(tmp_path / "state", broker.port, "mnist")  # type: ignore[arg-type]
        with running_gateway(settings, tmp_path):
            code = main(
                [
                    "simulate",
                    "--broker",
                    broker.address,
                    "--devices",
                    "2",
                    "--fps",
                    "5",
                    "--duration",
                    "4",
                    "--adversarial-rate",
                    "0.3",
                    "--attack",
                    "fgsm",
                    "--envelope",
                ]
            )
        output = capsys.readouterr().out
        assert code == 0, output
        sent, answered, detected, attacked = counts(output)
        assert sent >= 30 and answered == sent, output
        assert attacked > 0 and detected / attacked >= 0.9, output
        for line in ("false-positive rate", "latency"):
            measured(output, line)
        assert "p99" in output

    @pytest.mark.parametrize("address", ["nohost:notaport", "localhost", "host:0", ":1883"])
    def test_bad_broker_address_is_one_line(self, address: str, capsys: pytest.CaptureFixture[str]) -> None:
        """A broker that is not HOST:PORT: one line on stderr, exit 2, before anything is loaded."""
        assert main(["simulate", "--broker", address]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--broker" in err

    def test_unreachable_broker_is_one_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Nothing listening on the port: one line on stderr, exit 1."""
        port = free_port()
        assert main(["simulate", "--broker", f"127.0.0.1:{port}", "--duration", "1"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("defed: cannot reach the broker"), err


class TestDemo:
    def test_runs_end_to_end(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`defed demo --duration 8`: exit 0, a summary, an audit command whose database holds quarantined rows."""
        state = tmp_path / "demo"
        code = main(["demo", "--duration", "8", "--state-dir", str(state), "--adversarial-rate", "0.3"])
        output = capsys.readouterr().out
        assert code == 0, output
        sent, answered, detected, _attacked = counts(output)
        assert sent > 0 and answered == sent, output
        # The closing hint is a command that works as printed, on the demo's audit log.
        db = state / "audit.sqlite3"
        (hint,) = [line.strip() for line in output.splitlines() if " quarantine list --db " in line]
        assert hint.endswith(f"quarantine list --db {db}")
        listed = subprocess.run(
            [*shlex.split(hint), "--json", "--limit", "0"], capture_output=True, text=True, timeout=120
        )
        assert listed.returncode == 0, listed.stderr
        events = json.loads(listed.stdout)
        assert len(events) >= detected > 0
        assert {e["device_id"] for e in events} <= {f"cam-{i:02d}" for i in range(100)}

    def test_hint_names_the_defed_that_runs(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """`defed` when it is the one on PATH; its full path when not (./dev demo); `python -m` otherwise."""
        from gateway.commands.demo import defed_command

        bindir = tmp_path / "bin"
        bindir.mkdir()
        defed = bindir / "defed"
        defed.write_text("#!/bin/sh\n")
        defed.chmod(0o755)
        monkeypatch.setattr(sys, "argv", [str(defed), "demo"])
        monkeypatch.setenv("PATH", str(bindir))
        assert defed_command() == "defed"
        monkeypatch.setenv("PATH", "/nonexistent")
        assert defed_command() == str(defed)
        monkeypatch.setattr(sys, "argv", ["/somewhere/pytest"])
        assert defed_command() == f"{sys.executable} -m gateway.cli"

    def test_bad_broker_address_is_one_line(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """`--broker nohost:notaport`: one line on stderr, exit 2."""
        assert main(["demo", "--broker", "nohost:notaport", "--state-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--broker" in err
