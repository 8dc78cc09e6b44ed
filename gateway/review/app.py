"""The review application: a list of quarantine events, an event page, their pictures, and JSON.

Every page answers in HTML, or in JSON when the client sends `Accept: application/json` or
`?format=json`, errors included. Handlers are plain functions (Starlette runs them on its thread
pool), each opening a short read-only connection through `gateway.queries`. Links in the pages are
relative, so the server also works behind a reverse proxy that mounts it under a sub-path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.codec import FrameError
from gateway.frame_export import sniff_format
from gateway.queries import (
    EventDetail,
    EventFilter,
    count_events,
    device_ids,
    event_image,
    get_event,
    list_events,
)
from gateway.review import images
from gateway.review.guards import BasicAuth, LoopbackHostOnly, SecurityHeaders, wants_json
from gateway.review.views import BundleShelf, EventViewer, EventViews, MemberView
from gateway.timespec import TimeSpecError, parse_moment

HERE = Path(__file__).parent
MAX_ID = 2**63 - 1  # the largest integer SQLite and PostgreSQL bigint hold; larger ids cannot exist
IMAGE_CACHE = "private, max-age=300"


class ReviewError(Exception):
    """A request that cannot be answered: its HTTP status and a message that says precisely why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class JSONPayload(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=json_default, indent=2).encode()


def json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class Review:
    """The handlers, over one audit log and one set of bundles."""

    def __init__(self, engine: Engine, bundles: BundleShelf, page_size: int) -> None:
        self.engine = engine
        self.page_size = page_size
        self.viewer = EventViewer(bundles, self.read_image)
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,  # every value is escaped unless a template says otherwise (none does)
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["when"] = lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S")

    # --- plumbing ----------------------------------------------------------------------

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as connection:
                yield connection
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            raise ReviewError(503, f"audit log query failed: {reason}") from None

    def read_image(self, event_id: int) -> bytes | None:
        with self.connection() as connection:
            return event_image(connection, event_id)

    def page(self, request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        html = self.templates.get_template(template).render(root=relative_root(request), **context)
        return HTMLResponse(html, status)

    def event(self, request: Request) -> EventDetail:
        event_id = path_id(request.path_params["event_id"], "quarantine event")
        with self.connection() as connection:
            event = get_event(connection, event_id)
        if event is None:
            raise ReviewError(404, f"no quarantine event with id {event_id}")
        return event

    def stored_image(self, event: EventDetail) -> bytes:
        image = self.read_image(event.id)
        if image is None:
            raise ReviewError(
                404, f"event {event.id} has no stored image (audit.store_images was off); SHA-256 {event.image_sha256}"
            )
        return image

    def views(self, event: EventDetail) -> EventViews:
        return self.viewer.views(event.id, event.image_sha256, event.bundle_name, event.bundle_version)

    def member(self, request: Request, event: EventDetail) -> MemberView:
        views = self.views(event)
        if not views.available:
            raise ReviewError(409, f"event {event.id}: {views.notice}")
        k = path_id(request.path_params["k"], "member", lowest=0)
        if k >= len(views.members):
            raise ReviewError(404, f"event {event.id}: no member {k}; the bundle has {len(views.members)}")
        return views.members[k]

    # --- pages -------------------------------------------------------------------------

    def list_page(self, request: Request) -> Response:
        as_json = wants_json(request.headers, request.query_params.get("format"))
        shown = {name: request.query_params.get(name, "") for name in ("device", "since", "until")}
        try:
            where = event_filter(shown)
            page = page_number(request.query_params.get("page"))
        except ReviewError as exc:
            if as_json:
                raise
            # The form again, with the values as typed and what is wrong with them.
            context = self.listing(EventFilter(), 1, shown, with_events=False)
            return self.page(request, "list.html", {**context, "error": exc.message}, exc.status)
        context = self.listing(where, page, shown)
        if as_json:
            return JSONPayload({
                "events": [{**asdict(e), **event_urls(e.id)} for e in context["events"]],
                **{key: context[key] for key in ("total", "page", "pages")}, "page_size": self.page_size,
                "filter": {"device": where.device_id, "since": where.since, "until": where.until},
            })
        return self.page(request, "list.html", context)

    def listing(self, where: EventFilter, page: int, shown: dict[str, str], with_events: bool = True) -> dict[str, Any]:
        """One page of events and what the list template shows around it (only the form without events)."""
        with self.connection() as connection:
            total = count_events(connection, where) if with_events else 0
            events = list_events(connection, where, self.page_size, (page - 1) * self.page_size) if with_events else []
            devices = device_ids(connection)
        pages = max(1, -(-total // self.page_size))

        def link(to: int) -> str | None:
            return "?" + urlencode({**{k: v for k, v in shown.items() if v}, "page": to}) if 1 <= to <= pages else None

        first = (page - 1) * self.page_size + 1
        return {
            "events": events, "total": total, "page": page, "pages": pages, "shown": shown, "devices": devices,
            "first": first, "last": first + len(events) - 1, "previous": link(page - 1), "next": link(page + 1),
            "filtered": any(shown.values()), "error": None,
        }

    def event_page(self, request: Request) -> Response:
        event = self.event(request)
        image = self.read_image(event.id)
        views = self.views(event)
        bars = score_bars(event.scores, event.thresholds, event.flagged_by)
        if wants_json(request.headers, request.query_params.get("format")):
            return JSONPayload({
                **asdict(event),
                "image_format": None if image is None else sniff_format(image),
                **event_urls(event.id),
                "views": views_json(event, views),
            })
        flagging = [m for m in views.members if m.index in event.flagged_by]
        return self.page(request, "event.html", {
            "event": event, "views": views, "bars": bars, "flagging": flagging,
            "image_format": None if image is None else (sniff_format(image) or "unknown format"),
            "label_name": lambda label: class_name(views, label),
        })

    # --- pictures ----------------------------------------------------------------------

    def frame_png(self, request: Request) -> Response:
        return png(images.frame_png(self.stored_image(self.event(request))))

    def thumbnail_png(self, request: Request) -> Response:
        image = self.read_image(self.event(request).id)
        return png(images.placeholder_png() if image is None else images.thumbnail_png(image))

    def input_png(self, request: Request) -> Response:
        event = self.event(request)
        views = self.views(event)
        if views.input_png is None:
            raise ReviewError(409, f"event {event.id}: {views.notice}")
        return png(views.input_png)

    def denoised_png(self, request: Request) -> Response:
        event = self.event(request)
        return png(self.member(request, event).denoised_png)

    def difference_png(self, request: Request) -> Response:
        event = self.event(request)
        return png(self.member(request, event).difference_png)

    # --- errors ------------------------------------------------------------------------

    def error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, ReviewError):
            status, message = exc.status, exc.message
        elif isinstance(exc, HTTPException):
            status = exc.status_code
            message = f"no such page: {request.url.path}" if status == 404 else exc.detail
        elif isinstance(exc, FrameError):
            status, message = 422, f"the stored frame does not decode: {exc.detail}"
        else:
            raise exc
        if wants_json(request.headers, request.query_params.get("format")):
            return JSONPayload({"error": message, "status": status}, status)
        return self.page(request, "error.html", {"status": status, "message": message}, status)


# --- request parsing -------------------------------------------------------------------


def relative_root(request: Request) -> str:
    """The way back to `/` from this page's URL, as a relative link (`./`, `../`, …)."""
    return "../" * (request.url.path.count("/") - 1) or "./"


def path_id(text: str, what: str, lowest: int = 1) -> int:
    if not text.isdigit() or not lowest <= int(text) <= MAX_ID:
        raise ReviewError(404, f"no {what} {text!r}: ids are whole numbers from {lowest}")
    return int(text)


def page_number(text: str | None) -> int:
    if text is None or text == "":
        return 1
    if not text.isdigit() or int(text) < 1:
        raise ReviewError(400, f"page must be a whole number from 1, not {text!r}")
    return int(text)


def event_filter(shown: dict[str, str]) -> EventFilter:
    """The filter from `device`, `since` and `until` as typed (the CLI's time forms)."""
    moments: dict[str, datetime | None] = {}
    for name in ("since", "until"):
        try:
            moments[name] = parse_moment(shown[name]) if shown[name].strip() else None
        except TimeSpecError as exc:
            raise ReviewError(400, f"{name}: {exc}") from None
    since, until = moments["since"], moments["until"]
    if since is not None and until is not None and since >= until:
        since_text, until_text = since.isoformat(timespec="seconds"), until.isoformat(timespec="seconds")
        raise ReviewError(400, f"since ({since_text}) is not before until ({until_text})")
    return EventFilter(shown["device"] or None, since, until)


# --- what the pages show ---------------------------------------------------------------


def png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": IMAGE_CACHE})


def event_urls(event_id: int) -> dict[str, str]:
    return {
        "url": f"/events/{event_id}",
        "frame_url": f"/events/{event_id}/frame.png",
        "thumbnail_url": f"/events/{event_id}/thumbnail.png",
    }


def views_json(event: EventDetail, views: EventViews) -> dict[str, Any]:
    base = f"/events/{event.id}"
    return {
        "available": views.available,
        "notice": views.notice,
        "bundle": views.bundle,
        "input_url": f"{base}/input.png" if views.available else None,
        "members": [
            {
                "index": m.index, "sigma": m.sigma, "edge": m.edge, "flagged": m.index in event.flagged_by,
                "score": event.scores[m.index] if m.index < len(event.scores) else None,
                "threshold": event.thresholds[m.index] if m.index < len(event.thresholds) else None,
                "recomputed_score": m.recomputed_score, "max_difference": m.max_difference,
                "denoised_url": f"{base}/members/{m.index}/denoised.png",
                "difference_url": f"{base}/members/{m.index}/difference.png",
            }
            for m in views.members
        ],
    }


def class_name(views: EventViews, label: int) -> str:
    """`7`, or `3 · cat` when the bundle's class names say more than the number."""
    if 0 <= label < len(views.classes) and views.classes[label] != str(label):
        return f"{label} · {views.classes[label]}"
    return str(label)


def score_bars(scores: list[float], thresholds: list[float], flagged_by: list[int]) -> list[dict[str, Any]]:
    """Each member's score against its threshold, as bar and mark positions in percent.

    With positive thresholds all members share one scale, score ÷ threshold from 0 to a little past
    the largest ratio: every threshold mark is at the same place, and a bar's length says how far
    over (or under) its own threshold the frame was. Otherwise each member gets a linear scale from 0.
    """
    pairs = list(zip(scores, thresholds, strict=False))
    if pairs and all(t > 0 for _, t in pairs):
        top = max(1.0, *(s / t for s, t in pairs)) * 1.15
        scaled = [(max(s / t, 0.0) / top, 1.0 / top) for s, t in pairs]
    else:
        scaled = [(max(s, 0.0) / (m := max(s, t, 1e-12) * 1.25), max(t, 0.0) / m) for s, t in pairs]
    return [
        {
            "index": k, "score": s, "threshold": t, "flagged": k in flagged_by,
            "score_pct": round(100 * bar, 2), "threshold_pct": round(100 * mark, 2),
            "ratio": s / t if t > 0 else None,
        }
        for k, ((s, t), (bar, mark)) in enumerate(zip(pairs, scaled, strict=True))
    ]


# --- the application -------------------------------------------------------------------


def create_app(
    engine: Engine,
    bundles: BundleShelf,
    *,
    page_size: int = 50,
    credentials: tuple[str, str] | None = None,
    loopback: bool = True,
) -> Starlette:
    """The review application over an audit log opened read-only (`gateway.audit_access`).

    `credentials` (user, password) turns on HTTP Basic auth for every route; `loopback` (the
    server is bound to a loopback address) answers only to localhost Host names.
    """
    review = Review(engine, bundles, page_size)
    event = "/events/{event_id}"
    routes = [
        Route("/", review.list_page),
        Route(event, review.event_page),
        Route(f"{event}/frame.png", review.frame_png),
        Route(f"{event}/thumbnail.png", review.thumbnail_png),
        Route(f"{event}/input.png", review.input_png),
        Route(event + "/members/{k}/denoised.png", review.denoised_png),
        Route(event + "/members/{k}/difference.png", review.difference_png),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders)]
    if loopback:
        middleware.append(Middleware(LoopbackHostOnly))
    if credentials is not None:
        middleware.append(Middleware(BasicAuth, username=credentials[0], password=credentials[1]))
    handlers = {ReviewError: review.error, HTTPException: review.error, FrameError: review.error}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
