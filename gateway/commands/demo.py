"""`defed demo`: the whole system on this machine — private broker, gateway, simulated fleet, live summary."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from gateway.broker import BrokerError, PrivateBroker
from gateway.commands.common import bundle_path
from gateway.commands.simulate import BrokerAddress, build_frames, fleet_options
from gateway.errors import RuntimeFailure, UserError
from gateway.simulator import Fleet, ImageFormat, Summary, connect, mqtt_client

ONLINE_TIMEOUT_S = 180.0  # loading torch and the bundle on a busy 2-core machine
DRAIN_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 10.0


class DemoGateway:
    """`python -m gateway.cli serve` with the demo's own config, state directory and log file."""

    def __init__(self, state_dir: Path, host: str, port: int, bundle: str) -> None:
        self.state_dir = state_dir
        self.log_path = state_dir / "gateway.log"
        self.config = state_dir / "gateway.toml"
        settings: dict[str, Any] = {
            "state_dir": str(state_dir),
            "stats_interval_s": 1.0,
            "drain_timeout_s": DRAIN_TIMEOUT_S,
            "mqtt": {
                "host": host,
                "port": port,
                "client_id": f"defed-demo-{uuid.uuid4().hex[:8]}",
                "session_expiry_s": 60,
            },
            "model": {"bundle": bundle},
            "metrics": {"listen": ""},
            "log": {"level": "info", "format": "json"},
        }
        lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items() if not isinstance(v, dict)]
        for group, values in settings.items():
            if isinstance(values, dict):
                lines += [f"[{group}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def audit_db(self) -> Path:
        return self.state_dir / "audit.sqlite3"

    def start(self) -> DemoGateway:
        with self.log_path.open("ab") as log:
            # Its own session: Ctrl-C stops the demo, which then stops the gateway with SIGTERM.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def wait_online(self, host: str, port: int, timeout: float) -> None:
        """Until the retained `defed/status` says online; RuntimeFailure if the gateway exits first."""
        online = threading.Event()
        client = mqtt_client(f"defed-demo-status-{uuid.uuid4().hex[:6]}")
        client.on_message = lambda _c, _u, m: online.set() if m.payload == b"online" else online.clear()
        connect(client, host, port)
        client.subscribe("defed/status", qos=1)
        try:
            deadline = time.monotonic() + timeout
            while not online.wait(0.5):  # also watch the process: an exit sends no message
                if self.exited() or time.monotonic() > deadline:
                    raise RuntimeFailure(f"the gateway did not come online; see its log {self.log_path}")
        finally:
            client.disconnect()
            client.loop_stop()

    def stop(self) -> int:
        """SIGTERM, then wait for the drain; the exit code (killed after the drain bound plus a margin)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(DRAIN_TIMEOUT_S + 20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def defed_command() -> str:
    """How to run `defed` again from the operator's shell: `defed` when that is what runs us and
    it is on PATH, else the full path (`./dev demo` runs .venv/bin/defed without activating)."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "defed":  # `python -m gateway.cli`, or a test runner
        return f"{shlex.quote(sys.executable)} -m gateway.cli"
    on_path = shutil.which("defed")
    return "defed" if on_path and Path(on_path).resolve() == argv0.resolve() else shlex.quote(str(argv0.resolve()))


def live_table(summary: Summary, fps: float) -> Table:
    lat = summary.latency_ms
    table = Table(title="defed demo", show_header=False, min_width=44)
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows = [
        ("frames/s answered", f"{fps:.1f}"),
        ("sent", str(summary.sent)),
        ("labelled", str(summary.labelled)),
        ("quarantined", str(summary.quarantined)),
        ("errors", str(summary.errors)),
        ("latency p50", "n/a" if lat.get("p50") is None else f"{lat['p50']:.1f} ms"),
        ("latency p99", "n/a" if lat.get("p99") is None else f"{lat['p99']:.1f} ms"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def run_live(fleet: Fleet, duration: float, console: Console) -> None:
    """Publish in a thread; refresh the summary every second until duration or Ctrl-C."""
    publisher = threading.Thread(target=fleet.run, args=(duration,), name="fleet", daemon=True)
    last_answered, last_at = 0, time.monotonic()
    with Live(live_table(fleet.measurement.summary(), 0.0), console=console, auto_refresh=False) as live:
        publisher.start()
        try:
            while publisher.is_alive():
                publisher.join(1.0)
                summary, now = fleet.measurement.summary(), time.monotonic()
                rate = (summary.answered - last_answered) / max(now - last_at, 1e-6)
                last_answered, last_at = summary.answered, now
                live.update(live_table(summary, rate), refresh=True)
        except KeyboardInterrupt:
            fleet.stop.set()
            publisher.join()
            console.print("stopping (Ctrl-C): waiting for the frames in flight; Ctrl-C again to abort")
        fleet.wait_for_answers(ANSWER_TIMEOUT_S)
        live.update(live_table(fleet.measurement.summary(), 0.0), refresh=True)


@click.command()
@click.option(
    "--duration",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="Seconds of publishing (Ctrl-C stops earlier).",
)
@click.option(
    "--broker",
    type=BrokerAddress(),
    default=None,
    help="Use this MQTT broker, HOST:PORT, instead of starting a private mosquitto.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("defed-demo"),
    show_default=True,
    help="The demo gateway's state: its config, log and SQLite audit log.",
)
@fleet_options
def demo(
    duration: float,
    broker: tuple[str, int] | None,
    state_dir: Path,
    devices: int,
    fps: float,
    adversarial_rate: float,
    attack: str,
    epsilon: float | None,
    fmt: ImageFormat | None,
    envelope: bool,
    bundle_ref: str,
    data: Path | None,
) -> None:
    """The whole system on this machine: private broker, gateway, simulated fleet, live summary."""
    state_dir = state_dir.resolve()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        ignore = state_dir / ".gitignore"
        if not ignore.exists():  # run from a checkout, the demo's state must not show up in git
            ignore.write_text("*\n")
    except OSError as exc:
        raise UserError(f"cannot create the state directory {state_dir}: {exc}") from None
    click.echo(f"demo state directory: {state_dir} (gateway log: {state_dir / 'gateway.log'})")
    frames = build_frames(bundle_ref, data, attack, epsilon, fmt)
    ref = bundle_path(bundle_ref)
    console = Console()
    with ExitStack() as stack:
        # Broker: ours on a free port unless given.
        if broker is None:
            try:
                private = stack.enter_context(PrivateBroker(own_session=True))
            except BrokerError as exc:
                raise RuntimeFailure(str(exc)) from None
            broker = private.host, private.port
            click.echo(f"private mosquitto on {private.address}")
        host, port = broker
        # Gateway: started, then online (it is stopped below, or killed by the exit stack on an error).
        gateway = DemoGateway(state_dir, host, port, str(ref.resolve() if ref.exists() else bundle_ref)).start()
        stack.callback(gateway.stop)
        click.echo("starting the gateway …")
        gateway.wait_online(host, port, ONLINE_TIMEOUT_S)
        # Fleet: publish and show the live summary.
        fleet = Fleet(
            host, port, frames, devices=devices, fps=fps, adversarial_rate=adversarial_rate, envelope=envelope
        )
        with fleet:
            run_live(fleet, duration, console)
        # Shutdown: the gateway drains and exits 0; the broker stops with the exit stack.
        code = gateway.stop()
    click.echo("\n" + fleet.measurement.summary().render())
    if code != 0:
        raise RuntimeFailure(f"the gateway exited with {code}; see {gateway.log_path}")
    db = shlex.quote(str(gateway.audit_db))
    click.echo("\nquarantined frames in the demo's audit log:")
    click.echo(f"  {defed_command()} quarantine list --db {db}")
    click.echo("  then, with the same --db: quarantine show ID, quarantine export ID --out frame.png, quarantine stats")
