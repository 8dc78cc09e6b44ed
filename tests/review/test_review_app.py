"""The review server's parts, in process: listen address, credentials, pictures, denoised views, routes.

The routes run on an audit log written by the real AuditLog, opened read-only as the server opens it,
through Starlette's test client. The browser tests (test_review_browser.py) run the whole thing.
"""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from urllib.parse import urljoin

import cv2
import numpy as np
import pytest
import torch
from gateway_helpers import attacked, jpeg, mnist_digits, png

pytest.importorskip("starlette", reason="the web extra is not installed")
pytest.importorskip("httpx2", reason="Starlette's test client needs httpx2 (the dev extra)")

from starlette.testclient import TestClient

from defed_core import Bundle
from defed_core.testing import untrained_bundle
from gateway.audit import AuditLog, QuarantineRecord
from gateway.audit_access import open_audit_log
from gateway.cli import main
from gateway.review import images
from gateway.review.app import create_app, score_bars
from gateway.review.guards import credentials_match, host_name
from gateway.review.listen import ListenError, exposure_problem, is_loopback, parse_listen
from gateway.review.views import BundleShelf, EventViewer, usable

HOSTILE_DEVICE = "<script>alert('x')</script>"
INJECTION = "cam-01' OR '1'='1"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class TestListenAddress:
    @pytest.mark.parametrize(("text", "host", "port"), [
        ("127.0.0.1:8088", "127.0.0.1", 8088),
        ("[::1]:8088", "::1", 8088),
        ("localhost:0", "localhost", 0),
        (":8088", "", 8088),
        ("0.0.0.0:80", "0.0.0.0", 80),
    ])
    def test_parses_host_and_port(self, text: str, host: str, port: int) -> None:
        """HOST:PORT, an IPv6 address in brackets, or :PORT for every interface."""
        address = parse_listen(text)
        assert (address.host, address.port) == (host, port)

    @pytest.mark.parametrize("text", ["8088", "localhost", "host:99999", "::1:8088", "[nothost]:1", "h:-1", ""])
    def test_refuses_anything_else(self, text: str) -> None:
        with pytest.raises(ListenError):
            parse_listen(text)

    @pytest.mark.parametrize(("host", "loopback"), [
        ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("localhost", True), ("LOCALHOST", True),
        ("", False), ("0.0.0.0", False), ("::", False), ("192.168.1.20", False), ("hub.lan", False),
    ])
    def test_only_loopback_counts_as_local(self, host: str, loopback: bool) -> None:
        """A host name other than localhost may resolve to anything, so it is not loopback."""
        assert is_loopback(host) is loopback

    def test_network_address_needs_a_password(self) -> None:
        """Without a password only loopback is allowed; the refusal names both ways out."""
        assert exposure_problem(parse_listen("127.0.0.1:8088"), has_password=False) is None
        assert exposure_problem(parse_listen("0.0.0.0:8088"), has_password=True) is None
        problem = exposure_problem(parse_listen("0.0.0.0:8088"), has_password=False)
        assert problem is not None and "review.password" in problem and "reverse proxy" in problem


class TestCredentials:
    def test_exact_user_and_password_only(self) -> None:
        assert credentials_match(basic("defed", "s3cret"), "defed", "s3cret")
        assert not credentials_match(basic("defed", "wrong"), "defed", "s3cret")
        assert not credentials_match(basic("admin", "s3cret"), "defed", "s3cret")
        assert not credentials_match(basic("defed", "s3cret "), "defed", "s3cret")

    def test_password_may_hold_colons_and_any_character(self) -> None:
        """The user ends at the first colon; the rest is the password, UTF-8."""
        assert credentials_match(basic("defed", "a:b:ç"), "defed", "a:b:ç")

    @pytest.mark.parametrize(
        "header", [None, "", "Bearer abc", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode()]
    )
    def test_malformed_headers_never_match(self, header: str | None) -> None:
        assert not credentials_match(header, "defed", "s3cret")

    @pytest.mark.parametrize(("header", "name"), [
        ("localhost:8088", "localhost"), ("127.0.0.1", "127.0.0.1"), ("[::1]:8088", "::1"),
        ("evil.example:80", "evil.example"),
    ])
    def test_host_header_name(self, header: str, name: str) -> None:
        assert host_name(header) == name


class TestPictures:
    def test_heatmap_is_hottest_where_the_frame_changed(self) -> None:
        """One changed pixel is the top of the colour scale, enlarged 8× without smoothing; the rest is black."""
        x = np.zeros((1, 28, 28), np.float32)
        denoised = x.copy()
        denoised[0, 5, 7] = 0.4
        denoised[0, 20, 3] = 0.1
        diff = images.difference(x, denoised)
        assert diff.max() == pytest.approx(0.4)
        heat = cv2.imdecode(np.frombuffer(images.heatmap_png(diff), np.uint8), cv2.IMREAD_COLOR)  # (224, 224, 3)
        assert heat.shape == (224, 224, 3)
        brightness = heat.astype(int).sum(axis=2)
        hot = np.argwhere(brightness == brightness.max())
        assert hot.min(axis=0).tolist() == [40, 56] and hot.max(axis=0).tolist() == [47, 63]
        assert brightness[0, 0] == brightness[200, 200] < brightness[160, 24] < brightness.max()

    def test_heatmap_of_no_change_is_uniform(self) -> None:
        x = np.full((3, 32, 32), 0.5, np.float32)
        heat = cv2.imdecode(np.frombuffer(images.heatmap_png(images.difference(x, x)), np.uint8), cv2.IMREAD_COLOR)
        assert heat.shape == (224, 224, 3) and (heat == heat[0, 0]).all()

    def test_model_view_keeps_colour_order(self) -> None:
        """A model image is RGB; the PNG decodes (BGR in OpenCV) to the same colours."""
        chw = np.zeros((3, 32, 32), np.float32)
        chw[0] = 1.0  # red
        view = cv2.imdecode(np.frombuffer(images.model_view_png(chw), np.uint8), cv2.IMREAD_COLOR)
        assert view.shape == (224, 224, 3) and view[0, 0].tolist() == [0, 0, 255]

    def test_frame_png_is_the_stored_png_itself(self) -> None:
        digit = mnist_digits(1)[0]
        stored = png(digit)
        assert images.frame_png(stored) == stored

    def test_other_formats_become_a_lossless_png(self) -> None:
        stored = jpeg(mnist_digits(1)[0])
        shown = cv2.imdecode(np.frombuffer(images.frame_png(stored), np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(shown, cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_UNCHANGED))

    @pytest.mark.parametrize(("shape", "size"), [((28, 28), (56, 56)), ((480, 640, 3), (42, 56))])
    def test_thumbnail_fits_the_box(self, shape: tuple[int, ...], size: tuple[int, int]) -> None:
        """Small frames grow by whole pixels, large ones shrink keeping their aspect."""
        frame = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
        thumb = cv2.imdecode(np.frombuffer(images.thumbnail_png(png(frame)), np.uint8), cv2.IMREAD_UNCHANGED)
        assert thumb.shape[:2] == size


class TestScoreBars:
    def test_one_scale_of_score_over_threshold(self) -> None:
        """Every threshold mark at the same place; the bar 13× over its threshold is the longest."""
        bars = score_bars([0.14, 0.0104, 0.06], [0.0107, 0.0208, 0.02], [0, 2])
        assert len({b["threshold_pct"] for b in bars}) == 1
        assert bars[0]["score_pct"] > bars[2]["score_pct"] > bars[0]["threshold_pct"] > bars[1]["score_pct"]
        assert bars[0]["score_pct"] < 100 and [b["flagged"] for b in bars] == [True, False, True]
        assert bars[1]["ratio"] == pytest.approx(0.5)

    def test_non_positive_threshold_gets_its_own_linear_scale(self) -> None:
        bars = score_bars([0.5, 2.0], [-1.0, 1.0], [0, 1])
        assert bars[0]["threshold_pct"] == 0 and bars[0]["ratio"] is None
        assert bars[1]["threshold_pct"] == pytest.approx(40.0) and bars[1]["score_pct"] == pytest.approx(80.0)


# --- an audit log and the bundle that decided it --------------------------------------------


@dataclass(frozen=True)
class Log:
    db: Path
    bundle: Bundle
    bundle_path: Path
    ids: dict[str, int]  # frame_id → audit id
    frames: dict[str, np.ndarray]  # frame_id → the digit as sent
    now: datetime  # when the events were written: their times are minutes before it


def record(bundle: Bundle, device: str, frame: str, digit: np.ndarray, at: datetime, version: str) -> QuarantineRecord:
    scores = bundle.scores(digit[None, ..., None])[0].tolist()
    return QuarantineRecord(device, frame, f"cameras/{device}/frames", at, 3, 5, 0.75, scores,
                            bundle.thresholds.tolist(), [0, 1], bundle.name, version, png(digit))


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    """Seven events of an untrained bundle: cam-01 ×3, cam-02 ×1, a hostile device id, an injection-like
    device id, and one decided by another version of the bundle."""
    root = tmp_path_factory.mktemp("review-log")
    bundle_path = root / "bundle"
    bundle = untrained_bundle(bundle_path)
    digits = attacked(mnist_digits(7))
    plan = [("cam-01", 0), ("cam-01", 10), ("cam-01", 20), ("cam-02", 30), (HOSTILE_DEVICE, 40), (INJECTION, 50)]
    # Times relative to the fixture's own clock (not the import's): `since=15m` must not depend on
    # how long the rest of a suite ran before this module.
    now = datetime.now(UTC)
    records = [record(bundle, device, f"f{i}", digits[i], now - timedelta(minutes=m), bundle.version)
               for i, (device, m) in enumerate(plan)]
    records.append(record(bundle, "cam-03", "f6", digits[6], now - timedelta(days=2), "9.9.9"))
    db = root / "audit.sqlite3"
    audit = AuditLog(f"sqlite:///{db}")
    audit.prepare()
    ids = audit.record(records)
    audit.close()
    return Log(db, bundle, bundle_path, {frame: i for (_, frame), i in ids.items()},
               {f"f{i}": digits[i] for i in range(7)}, now)


@pytest.fixture(scope="module")
def client(log: Log) -> Iterator[TestClient]:
    engine = open_audit_log(f"sqlite:///{log.db}")
    app = create_app(engine, BundleShelf(str(log.bundle_path)), page_size=3)
    with TestClient(app, base_url="http://127.0.0.1:8088") as test_client:
        yield test_client
    engine.dispose()


def decode(data: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None
    return pixels


class TestDenoisedViews:
    def test_only_the_version_that_decided_the_event(self, log: Log) -> None:
        """The event's bundle is found by name; another version yields a notice naming both versions."""
        shelf = BundleShelf(str(log.bundle_path))
        assert isinstance(usable(shelf.find("untrained"), "0.0.0"), Bundle)
        notice = usable(shelf.find("untrained"), "9.9.9")
        assert isinstance(notice, str) and "9.9.9" in notice and "0.0.0" in notice

    def test_unknown_bundle_is_a_notice(self, log: Log) -> None:
        notice = BundleShelf(str(log.bundle_path)).find("no-such-bundle")
        assert isinstance(notice, str) and "no-such-bundle" in notice

    def test_views_are_the_members_outputs_and_cached(self, log: Log) -> None:
        """Denoised views are D_k(x) of the stored frame, recomputed scores match, a second look is cached."""
        reads: list[int] = []
        stored = png(log.frames["f0"])
        viewer = EventViewer(BundleShelf(str(log.bundle_path)), lambda i: reads.append(i) or stored)
        views = viewer.views(1, "sha", "untrained", "0.0.0")
        assert views.available and len(views.members) == 2
        x = torch.from_numpy(log.frames["f0"][None, None] / 255.0).float()  # (1, 1, 28, 28)
        with torch.inference_mode():
            out, scores = log.bundle.outputs(x)
        for k, member in enumerate(views.members):
            shown = decode(member.denoised_png)[::8, ::8] / 255.0  # (28, 28): one pixel per 8×8 block
            assert np.abs(shown - out.denoised[k, 0, 0].numpy()).max() <= 0.5 / 255 + 1e-6
            assert member.recomputed_score == pytest.approx(float(scores[0, k]), rel=1e-5)
        assert viewer.views(1, "sha", "untrained", "0.0.0") is views and reads == [1]

    def test_a_frame_of_another_shape_is_shown_as_the_model_saw_it(self, log: Log) -> None:
        """A 56×56 colour frame is converted like the daemon does it (gray, 28×28), and says so."""
        larger = cv2.resize(log.frames["f0"], (56, 56), interpolation=cv2.INTER_NEAREST)  # (56, 56)
        digit = cv2.cvtColor(larger, cv2.COLOR_GRAY2BGR)  # (56, 56, 3)
        viewer = EventViewer(BundleShelf(str(log.bundle_path)), lambda _i: png(digit))
        views = viewer.views(1, "sha-colour", "untrained", "0.0.0")
        assert views.input_converted and views.input_png is not None
        model_input = decode(views.input_png)
        assert model_input.shape == (224, 224)  # gray, 28×28 enlarged 8×
        assert np.abs(model_input[::8, ::8].astype(int) - log.frames["f0"]).max() <= 1
        same = EventViewer(BundleShelf(str(log.bundle_path)), lambda _i: png(log.frames["f0"]))
        assert not same.views(1, "sha", "untrained", "0.0.0").input_converted

    def test_version_mismatch_renders_nothing(self, log: Log) -> None:
        viewer = EventViewer(BundleShelf(str(log.bundle_path)), lambda _i: png(log.frames["f0"]))
        views = viewer.views(7, "sha", "untrained", "9.9.9")
        assert not views.available and views.members == () and "9.9.9" in (views.notice or "")


class TestRoutes:
    def test_list_is_newest_first_and_paginated(self, client: TestClient, log: Log) -> None:
        """JSON: three a page, newest first, with the total and page count."""
        first = client.get("/", headers={"Accept": "application/json"}).json()
        second = client.get("/?page=2&format=json").json()
        assert (first["total"], first["pages"], first["page_size"]) == (7, 3, 3)
        ids = [e["id"] for e in first["events"] + second["events"]]
        assert ids == [log.ids[f"f{i}"] for i in range(6)]
        assert first["events"][0]["frame_url"] == f"/events/{log.ids['f0']}/frame.png"

    def test_html_list_links_every_event(self, client: TestClient, log: Log) -> None:
        page = client.get("/?page=3")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert f'href="./events/{log.ids["f6"]}"' in page.text and "Page 3 of 3" in page.text

    def test_filters_use_the_cli_time_forms(self, client: TestClient, log: Log) -> None:
        """device is exact; since/until take durations and ISO-8601 like `defed quarantine list`."""
        def ids(query: str) -> list[int]:
            return [e["id"] for e in client.get(f"/?format=json&{query}").json()["events"]]
        assert ids("device=cam-01") == [log.ids["f0"], log.ids["f1"], log.ids["f2"]]
        assert ids("device=cam") == []
        assert ids("since=15m") == [log.ids["f0"], log.ids["f1"]]
        until = (log.now - timedelta(minutes=35)).isoformat()
        assert client.get("/", params={"until": until, "format": "json"}).json()["total"] == 3

    @pytest.mark.parametrize(("query", "said"), [
        ("since=yesterday", "since: 'yesterday' is not a time"),
        ("until=2025-13-01", "until: '2025-13-01' is not a time"),
        ("since=1h&until=2h", "is not before until"),
        ("page=0", "page must be a whole number from 1, not '0'"),
        ("page=two", "page must be a whole number from 1, not 'two'"),
    ])
    def test_bad_parameters_are_400_with_the_reason(self, client: TestClient, query: str, said: str) -> None:
        """In JSON when asked; in HTML the filter form comes back with the message and the values as typed."""
        answer = client.get(f"/?{query}&format=json")
        assert answer.status_code == 400 and said in answer.json()["error"]
        page = client.get(f"/?{query}")
        assert page.status_code == 400 and '<form class="filters"' in page.text
        assert said.replace("'", "&#39;") in page.text

    @pytest.mark.parametrize("path", ["/events/999", "/events/abc", "/events/0", "/events/99999999999999999999",
                                      "/events/999/frame.png", "/nowhere"])
    def test_unknown_ids_and_pages_are_404(self, client: TestClient, path: str) -> None:
        answer = client.get(path, headers={"Accept": "application/json"})
        assert answer.status_code == 404 and answer.json()["status"] == 404

    def test_unknown_member_is_404(self, client: TestClient, log: Log) -> None:
        answer = client.get(f"/events/{log.ids['f0']}/members/2/denoised.png?format=json")
        assert answer.status_code == 404 and "no member 2" in answer.json()["error"]

    def test_event_json_has_every_stored_field_and_the_views(self, client: TestClient, log: Log) -> None:
        event = client.get(f"/events/{log.ids['f0']}", headers={"Accept": "application/json"}).json()
        assert {"id", "device_id", "frame_id", "topic", "received_at", "decided_at", "original_label", "label",
                "confidence", "scores", "thresholds", "flagged_by", "bundle_name", "bundle_version",
                "image_sha256", "image_size", "image_format"} <= set(event)
        assert event["image_format"] == "png" and event["views"]["available"]
        members = event["views"]["members"]
        assert [m["recomputed_score"] for m in members] == pytest.approx(event["scores"], rel=1e-5)
        for url in (event["frame_url"], members[0]["denoised_url"], members[1]["difference_url"]):
            image = client.get(url)
            assert image.headers["content-type"] == "image/png" and decode(image.content).size > 0

    def test_frame_is_the_evidence(self, client: TestClient, log: Log) -> None:
        frame = decode(client.get(f"/events/{log.ids['f2']}/frame.png").content)
        assert np.array_equal(frame, log.frames["f2"])

    def test_other_version_gets_a_notice_not_pictures(self, client: TestClient, log: Log) -> None:
        event_id = log.ids["f6"]
        page = client.get(f"/events/{event_id}")
        assert page.status_code == 200 and "9.9.9" in page.text and 'id="views-notice"' in page.text
        assert "denoised.png" not in page.text and 'id="frame"' in page.text
        answer = client.get(f"/events/{event_id}/members/0/denoised.png?format=json")
        assert answer.status_code == 409 and "9.9.9" in answer.json()["error"]

    def test_hostile_device_id_is_escaped(self, client: TestClient, log: Log) -> None:
        """A device id holding markup is shown as text in the list and the event page, never as markup."""
        for path in ("/", f"/events/{log.ids['f4']}"):
            text = client.get(path).text
            assert "<script>" not in text and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in text

    def test_injection_like_filter_is_just_a_device_id(self, client: TestClient, log: Log) -> None:
        """Bound parameters: the text matches the one device called that, and no other row."""
        found = client.get("/", params={"device": INJECTION, "format": "json"}).json()
        assert [e["id"] for e in found["events"]] == [log.ids["f5"]]
        assert client.get("/", params={"device": "x' OR 1=1 --", "format": "json"}).json()["total"] == 0
        assert client.get("/?format=json").json()["total"] == 7

    def test_links_are_relative_so_a_proxy_may_mount_it_under_a_path(self, client: TestClient, log: Log) -> None:
        """Every link, picture, stylesheet and form of every page stays under /defed/ when served from there."""
        for path in ("/", "/?device=cam-01&page=1", f"/events/{log.ids['f0']}", "/events/999"):
            html = client.get(path).text
            links = re.findall(r'(?:href|src|action)="([^"]*)"', html)
            assert links
            public = urljoin("https://hub.example/defed/", path.lstrip("/"))
            for link in links:
                assert urljoin(public, unescape(link)).startswith("https://hub.example/defed/"), (path, link)

    def test_security_headers(self, client: TestClient) -> None:
        headers = client.get("/").headers
        assert "script-src" not in headers["content-security-policy"]
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"

    def test_only_localhost_names_on_a_loopback_bind(self, client: TestClient) -> None:
        """The DNS-rebinding guard: a foreign Host is refused, localhost names are served."""
        assert client.get("/", headers={"Host": "attacker.example"}).status_code == 421
        assert client.get("/", headers={"Host": "localhost:8088"}).status_code == 200
        assert client.get("/", headers={"Host": "[::1]:8088"}).status_code == 200


@pytest.fixture(scope="module")
def guarded(log: Log) -> Iterator[TestClient]:
    """The application with a password, as served on a network address."""
    engine = open_audit_log(f"sqlite:///{log.db}")
    app = create_app(engine, BundleShelf(str(log.bundle_path)), credentials=("defed", "s3cret"), loopback=False)
    with TestClient(app, base_url="http://hub.lan:8088") as test_client:
        yield test_client
    engine.dispose()


class TestPassword:
    @pytest.mark.parametrize("path", ["/", "/?format=json", "/events/1", "/events/1/frame.png",
                                      "/events/1/members/0/difference.png", "/static/review.css", "/nowhere"])
    def test_every_route_needs_the_password(self, guarded: TestClient, path: str) -> None:
        refused = guarded.get(path)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic realm=")
        assert guarded.get(path, headers={"Authorization": basic("defed", "nope")}).status_code == 401
        assert guarded.get(path, headers={"Authorization": basic("defed", "s3cret")}).status_code != 401


class TestServeCommand:
    def one_line(self, capsys: pytest.CaptureFixture[str], code: int, *args: str) -> str:
        assert main(["quarantine", "serve", *args]) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("defed: "), err
        return err

    def test_network_address_without_password_exits_2(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        """Refused before anything is opened, naming the password setting and the reverse proxy."""
        err = self.one_line(capsys, 2, "--listen", "0.0.0.0:8088", "--db", str(log.db))
        assert "review.password" in err and "reverse proxy" in err

    def test_listen_from_the_settings_is_checked_too(
        self, log: Log, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DEFED_REVIEW__LISTEN", ":8088")
        assert "without a password" in self.one_line(capsys, 2, "--db", str(log.db))

    def test_bad_listen_exits_2(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        assert "--listen" in self.one_line(capsys, 2, "--listen", "8088", "--db", str(log.db))

    def test_taken_port_exits_1(self, log: Log, capsys: pytest.CaptureFixture[str]) -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            assert "cannot listen on" in self.one_line(capsys, 1, "--listen", f"127.0.0.1:{port}", "--db", str(log.db))

    def test_missing_web_extra_is_one_line(
        self, log: Log, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
        err = self.one_line(capsys, 2, "--db", str(log.db))
        assert "web extra" in err and "defed-gateway[web]" in err
