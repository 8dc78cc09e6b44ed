"""Subcommands of `defed`, one module each."""

from __future__ import annotations

import click


def register(cli: click.Group) -> None:
    from gateway.commands import (
        calibrate,
        demo,
        evaluate,
        import_reference,
        predict,
        quarantine,
        quarantine_serve,
        serve,
        simulate,
        train,
    )

    for command in (train.train, calibrate.calibrate, import_reference.import_reference, predict.predict,
                    evaluate.evaluate, serve.serve, simulate.simulate, demo.demo, quarantine.quarantine):
        cli.add_command(command)
    quarantine.quarantine.add_command(quarantine_serve.serve_command)
