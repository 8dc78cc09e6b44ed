"""Subcommands of `defed`, one module each."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    from gateway.commands import calibrate, import_reference, predict, serve, train

    for command in (train.train, calibrate.calibrate, import_reference.import_reference, predict.predict,
                    serve.serve):
        cli.add_command(command)
    from gateway.commands.evaluate import evaluate; cli.add_command(evaluate)  # noqa: E702, I001 — one line: `defed evaluate`
