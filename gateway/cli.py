"""The `defed` command: one entry point, one subcommand module per job.

Inner layers raise; only this module turns an error into a one-line message and an exit code
(2 for bad input or settings, 1 for a failure at run time).
"""

from __future__ import annotations

import sys

import click

from gateway.commands import register
from gateway.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="defed-gateway", prog_name="defed")
def cli() -> None:
    """defed: an MQTT gateway that screens camera frames for adversarial examples."""


register(cli)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="defed", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("defed: aborted", err=True)
        return 130
    except click.ClickException as exc:
        click.echo(f"defed: {exc.format_message()}", err=True)
        return exc.exit_code
    except UserError as exc:
        click.echo(f"defed: {exc}", err=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
