"""`defed serve --config FILE`: run the gateway in the foreground (what systemd runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.settings import load_settings


@click.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="TOML settings file (see configs/gateway.toml); DEFED_… variables override it.")
def serve(config_path: Path | None) -> None:
    """Run the gateway: MQTT frames in, labels and quarantine events out."""
    settings = load_settings(config_path)
    # Imported here so that a bad setting is reported before torch is loaded.
    from gateway.app import Gateway
    from gateway.lifecycle import ShutdownRequest
    from gateway.logs import configure_logging

    configure_logging(settings.log)
    shutdown = ShutdownRequest()
    shutdown.install()
    code = Gateway(settings).run(shutdown)
    sys.stdout.flush()
    if code:
        raise SystemExit(code)
