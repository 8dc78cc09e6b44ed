"""`defed quarantine serve`: the audit log in a browser, read-only, with a JSON API for scripts.

Needs the `web` extra (Starlette, Jinja2, uvicorn). Everything that can be refused is refused
before the web stack, torch or the database are touched: a bad setting, a bad --listen, a
network-facing address without a password.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import click
from sqlalchemy import make_url

from gateway.audit_access import audit_url, open_audit_log
from gateway.commands.quarantine import audit_options
from gateway.errors import RuntimeFailure, UserError
from gateway.review.listen import ListenAddress, ListenError, exposure_problem, parse_listen
from gateway.settings import load_settings

WEB_MODULES = ("starlette", "jinja2", "uvicorn")


def require_web_extra() -> None:
    missing = [name for name in WEB_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(
            f"defed quarantine serve needs the web extra ({', '.join(missing)} not installed): "
            "pip install 'defed-gateway[web]'"
        )


def bind(address: ListenAddress) -> socket.socket:
    """A listening socket, so that a taken port is one line here rather than a traceback in uvicorn."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host or "0.0.0.0", address.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise RuntimeFailure(f"cannot listen on {address}: {exc.strerror or exc}") from None
    return sock


@click.command("serve")
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Where to serve [default: review.listen from the settings, 127.0.0.1:8088]. An address other "
    "than loopback needs review.password (or bind to loopback behind a reverse proxy). Port 0 picks a free port.",
)
@audit_options
def serve_command(listen: str | None, config_path: Path | None, db: str | None) -> None:
    """Quarantined frames in a browser: read-only pages, and JSON for scripts.

    \b
    Pages:  /                 events, newest first, with thumbnails; ?device=ID&since=T&until=T&page=N
            /events/ID        the frame, each flagging member's denoised view and |x − D(x)| heatmap,
                              scores against thresholds, every stored field
    JSON:   the same URLs with `Accept: application/json` or ?format=json

    The denoised views are computed here, on the CPU with one thread, with the bundle named in the
    event (a shipped one, or model.bundle from --config) and only if its version matches.
    """
    require_web_extra()
    settings = load_settings(config_path)
    try:
        address = parse_listen(listen) if listen is not None else parse_listen(settings.review.listen)
    except ListenError as exc:
        raise UserError(f"--listen: {exc}") from None
    password = settings.review.password
    problem = exposure_problem(address, password is not None)
    if problem is not None:
        raise UserError(problem)
    url = audit_url(db) if db else settings.audit_url
    engine = open_audit_log(url)
    sock = bind(address)

    # Imported only now: the checks above answer in a fraction of a second, before torch loads.
    import torch
    import uvicorn

    from gateway.review.app import create_app
    from gateway.review.views import BundleShelf

    torch.set_num_threads(1)  # the denoised views must not take the hub's cores from the daemon
    credentials = None if password is None else (settings.review.username, password.get_secret_value())
    app = create_app(
        engine,
        BundleShelf(settings.model.bundle),
        page_size=settings.review.page_size,
        credentials=credentials,
        loopback=address.loopback,
    )
    shown = make_url(url).render_as_string(hide_password=True)
    auth = "password required" if credentials else "no password: loopback only"
    click.echo(f"serving {shown} read-only at {address.url(sock.getsockname()[1])} ({auth}); Ctrl-C stops")
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        engine.dispose()
