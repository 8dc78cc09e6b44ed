"""The review page in a real headless Chromium, over events that a real gateway quarantined.

One scenario for the module: a private mosquitto; `defed serve` with the shipped mnist bundle; a camera
sending benign and FGSM-attacked MNIST digits from three devices, one of them with markup in its id; then
`defed quarantine serve` on the audit log the gateway wrote (twice: without and with a password), and
Chromium driven by Playwright. Screenshots of every page go to $DEFED_TEST_ARTIFACTS (default: a
`review-screenshots` directory under pytest's tmp path).

Chromium is Debian's (/usr/bin/chromium, `./dev setup` installs it); Playwright never downloads one.
Without it the tests skip, or fail when CI=true.
"""

from __future__ import annotations

import importlib.util
import os
import select
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gateway_helpers import MNIST, Camera, GatewayProcess, ResultListener, gateway_settings, png

from defed_core import Bundle
from gateway.audit import AuditLog, QuarantineRecord
from gateway.broker import PrivateBroker

CHROMIUM = Path(os.environ.get("DEFED_CHROMIUM", "/usr/bin/chromium"))
HOSTILE = "<img src=x onerror=alert(document.domain)>"
PASSWORD = "correct horse battery staple"
VIEWPORT = {"width": 1360, "height": 900}
# (device, index into the attacked digits); benign digits go to the same devices and must not show up.
ATTACKS = [("cam-01", 0), ("cam-01", 1), ("cam-01", 2), ("cam-02", 3), ("cam-02", 4), (HOSTILE, 5)]
BENIGN = ["cam-01", "cam-02", "cam-03"]


def require_browser() -> None:
    problem = None
    if importlib.util.find_spec("playwright") is None:
        problem = "Playwright for Python is not installed (the dev extra)"
    elif not CHROMIUM.is_file():
        problem = f"no Chromium at {CHROMIUM}: apt-get install chromium (./dev setup does)"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)


@dataclass
class Scenario:
    url: str  # the review server, no password
    guarded_url: str  # the same audit log behind a password
    browser: Any  # playwright.sync_api.Browser
    bundle: Bundle
    sent: dict[tuple[str, str], np.ndarray]  # (device, frame_id) → the attacked digit as sent
    quarantined: dict[int, dict[str, Any]]  # audit id → the gateway's quarantine message
    mismatch_id: int  # an event decided by another version of the bundle
    artifacts: Path

    def ids_of(self, device: str) -> set[int]:
        return {i for i, q in self.quarantined.items() if q["device_id"] == device}


class ReviewServer:
    """`defed quarantine serve` in a subprocess on a free port."""

    def __init__(self, db: Path, log: Path, env: dict[str, str] | None = None) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("DEFED_")}
        command = [sys.executable, "-m", "gateway.cli", "quarantine", "serve", "--db", str(db),
                   "--listen", "127.0.0.1:0"]
        self.log = log
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                            env={**clean, **(env or {}), "PYTHONUNBUFFERED": "1"})

    def wait_url(self, timeout: float = 120.0) -> str:
        """The URL from the line the server prints once it listens."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        assert " at http://" in line, f"review server did not start: {line!r}\n{self.log.read_text()[-3000:]}"
        return line.split(" at ", 1)[1].split()[0]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def fgsm(bundle: Bundle, digits: np.ndarray, labels: np.ndarray, epsilon: float = 0.3) -> np.ndarray:
    """FGSM against the bundle's own classifier, as uint8 frames a camera could send."""
    x = torch.from_numpy(digits[:, None] / 255.0).float().requires_grad_(True)  # (N, 1, 28, 28)
    F.cross_entropy(bundle.classifier(x), torch.from_numpy(labels).long()).backward()
    assert x.grad is not None
    adversarial = (x + epsilon * x.grad.sign()).clamp(0, 1).detach()
    return np.rint(adversarial[:, 0].numpy() * 255).astype(np.uint8)  # (N, 28, 28)


def choose_digits(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """Benign digits well under every threshold; FGSM digits that fool the classifier, are well over both
    thresholds (so that batching cannot flip a decision) and get their true label back."""
    with np.load(MNIST) as data:
        digits, labels = np.asarray(data["x_test"][:60]), np.asarray(data["y_test"][:60])
    thresholds = bundle.thresholds.numpy()
    clean = bundle.scores(digits[..., None]).numpy()  # (N, K)
    attacks = fgsm(bundle, digits, labels)
    decision = bundle.predict(attacks[..., None])
    useful = (
        (decision.original_label.numpy() != labels)
        & (decision.label.numpy() == labels)
        & (decision.scores.numpy() > 1.5 * thresholds).all(axis=1)
    )
    benign = digits[(clean < 0.5 * thresholds).all(axis=1)][: len(BENIGN)]
    chosen = attacks[useful][: len(ATTACKS)]
    assert len(benign) == len(BENIGN) and len(chosen) == len(ATTACKS)
    return benign, chosen


def run_gateway(
    broker: PrivateBroker, gateway: GatewayProcess, benign: np.ndarray, attacks: np.ndarray
) -> dict[int, dict[str, Any]]:
    """Send the frames through the running gateway; its quarantine messages by audit id."""
    listener, camera = ResultListener(broker.port), Camera(broker.port)
    try:
        keys = set()
        for i, device in enumerate(BENIGN):
            camera.send(device, png(benign[i]), frame_id=f"benign-{i}")
            keys.add((device, f"benign-{i}"))
        for device, i in ATTACKS:
            camera.send(device, png(attacks[i]), frame_id=f"attack-{i}")
            keys.add((device, f"attack-{i}"))
        assert listener.wait_for_frames(keys, timeout=120), listener.missing(keys)
    finally:
        camera.close()
        Camera.open_cameras.remove(camera)
        listener.close()
    gateway.signal(signal.SIGTERM)
    assert gateway.wait(60) == 0, gateway.log()
    quarantined = {p["audit_id"]: p for t, p in listener.results() if t.endswith("/quarantine")}
    assert {(p["device_id"], p["frame_id"]) for p in quarantined.values()} == {
        (device, f"attack-{i}") for device, i in ATTACKS
    }
    return quarantined


def add_event_of_another_version(db: Path, digit: np.ndarray) -> int:
    """An event as a gateway with mnist 0.9.0 would have recorded it (two days ago)."""
    audit = AuditLog(f"sqlite:///{db}")
    at = datetime.now(UTC) - timedelta(days=2)
    ids = audit.record([QuarantineRecord("cam-04", "old-1", "cameras/cam-04/frames", at, 3, 8, 0.9, [0.05, 0.06],
                                         [0.01, 0.02], [0, 1], "mnist", "0.9.0", png(digit))])
    audit.close()
    return ids[("cam-04", "old-1")]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    require_browser()
    from playwright.sync_api import sync_playwright

    root = tmp_path_factory.mktemp("review")
    artifacts = Path(os.environ.get("DEFED_TEST_ARTIFACTS") or tmp_path_factory.mktemp("review-screenshots"))
    artifacts.mkdir(parents=True, exist_ok=True)
    bundle = Bundle.load_default("mnist", "cpu", fast=False)
    benign, attacks = choose_digits(bundle)
    db = root / "state" / "audit.sqlite3"
    with ExitStack() as running:  # everything started below is stopped in reverse order, whatever fails
        broker = running.enter_context(PrivateBroker())
        playwright = running.enter_context(sync_playwright())
        gateway = GatewayProcess(gateway_settings(root / "state", broker.port, Path("mnist")), root)
        running.callback(gateway.stop)
        gateway.start(wait_ready=False)
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))  # while the gateway loads
        running.callback(browser.close)
        gateway.wait_for_notify("READY=1", 240)
        # The audit log exists once the gateway is ready: the review servers start while frames flow.
        servers = [
            ReviewServer(db, root / "review.log"),
            ReviewServer(db, root / "review-guarded.log", {"DEFED_REVIEW__PASSWORD": PASSWORD}),
        ]
        for server in servers:
            running.callback(server.stop)
        quarantined = run_gateway(broker, gateway, benign, attacks)
        mismatch_id = add_event_of_another_version(db, attacks[0])
        url, guarded_url = (server.wait_url() for server in servers)
        sent = {(device, f"attack-{i}"): attacks[i] for device, i in ATTACKS}
        yield Scenario(url, guarded_url, browser, bundle, sent, quarantined, mismatch_id, artifacts)


@pytest.fixture
def page(scenario: Scenario) -> Iterator[Any]:
    context = scenario.browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    yield page
    context.close()


def row_ids(page: Any) -> list[int]:
    return [int(i) for i in page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.eventId)")]


def decode(data: bytes) -> np.ndarray:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None, "not an image"
    return pixels


def loaded(page: Any, selector: str) -> tuple[int, int]:
    """The natural size of an <img> the browser has decoded; (0, 0) for a broken one."""
    complete, width, height = page.locator(selector).evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]")
    assert complete, f"{selector} did not finish loading"
    return width, height


class TestListPage:
    def test_lists_the_quarantined_frames_newest_first(self, scenario: Scenario, page: Any) -> None:
        """Every frame the gateway quarantined is a row with its thumbnail; benign frames are absent."""
        response = page.goto(scenario.url)
        assert response.status == 200
        ids = row_ids(page)
        assert set(ids) == set(scenario.quarantined) | {scenario.mismatch_id}
        assert ids[-1] == scenario.mismatch_id  # two days old
        thumbnails = page.locator("img.thumb").evaluate_all(
            "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
        assert thumbnails == [[True, 56, 56]] * len(ids)
        some_id, message = next(iter(scenario.quarantined.items()))
        row = page.locator(f"tr[data-event-id='{some_id}']").inner_text()
        assert message["device_id"] in row and message["frame_id"] in row
        assert f"{message['original_label']} → {message['label']}" in row
        assert page.inner_text("#summary").startswith(f"Events 1–{len(ids)} of {len(ids)}")
        page.screenshot(path=scenario.artifacts / "list.png", full_page=True)

    def test_device_filter_narrows_the_list(self, scenario: Scenario, page: Any) -> None:
        """Typing a device into the form and submitting it keeps only that device's events."""
        page.goto(scenario.url)
        page.fill("input[name=device]", "cam-02")
        with page.expect_navigation():
            page.click("button[type=submit]")
        assert "device=cam-02" in page.url and page.input_value("input[name=device]") == "cam-02"
        assert set(row_ids(page)) == scenario.ids_of("cam-02") and len(scenario.ids_of("cam-02")) == 2
        page.screenshot(path=scenario.artifacts / "list-filtered.png", full_page=True)

    def test_time_filter_takes_the_cli_forms(self, scenario: Scenario, page: Any) -> None:
        """since=1h leaves out the old event; until (exclusive) an ISO time; a bad time is a 400 with the form."""
        page.goto(f"{scenario.url}?since=1h")
        assert set(row_ids(page)) == set(scenario.quarantined)
        listing = page.request.get(f"{scenario.url}?format=json").json()["events"]
        newest = max(datetime.fromisoformat(e["received_at"]) for e in listing)
        older = {e["id"] for e in listing if datetime.fromisoformat(e["received_at"]) < newest}
        page.goto(f"{scenario.url}?{urlencode({'until': newest.isoformat()})}")
        assert set(row_ids(page)) == older and len(older) < len(listing)
        response = page.goto(f"{scenario.url}?since=yesterday")
        assert response.status == 400
        assert "'yesterday' is not a time" in page.inner_text("#error")
        assert page.input_value("input[name=since]") == "yesterday"
        page.screenshot(path=scenario.artifacts / "list-bad-filter.png", full_page=True)

    def test_hostile_device_id_is_shown_as_text(self, scenario: Scenario, page: Any) -> None:
        """Markup in a device id is escaped in the list and the event page: no element, no script run."""
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        (hostile_id,) = scenario.ids_of(HOSTILE)
        page.goto(scenario.url)
        assert page.inner_text(f"tr[data-event-id='{hostile_id}'] td.device").strip() == HOSTILE
        assert page.locator("img[src='x']").count() == 0
        page.goto(f"{scenario.url}events/{hostile_id}")
        assert HOSTILE in page.inner_text("h1") and page.locator("img[src='x']").count() == 0
        assert dialogs == []

    def test_injection_like_filters_are_harmless(self, scenario: Scenario, page: Any) -> None:
        """A quote-laden device is just a device id nobody has; the table is intact afterwards."""
        quoted = urlencode({"device": "cam-01' OR '1'='1"})
        response = page.goto(f"{scenario.url}?{quoted}")
        assert response.status == 200 and row_ids(page) == []
        assert "No quarantined frame matches" in page.inner_text("#summary")
        response = page.goto(f"{scenario.url}?{urlencode({'since': '1h; DROP TABLE quarantine_events'})}")
        assert response.status == 400
        page.goto(scenario.url)
        assert len(row_ids(page)) == len(scenario.quarantined) + 1


class TestEventPage:
    def test_shows_the_frame_and_each_flagging_members_views(self, scenario: Scenario, page: Any) -> None:
        """The frame as sent, each flagging member's D_k(x) and its heatmap, all with real pixels."""
        event_id = min(scenario.ids_of("cam-01"))
        message = scenario.quarantined[event_id]
        digit = scenario.sent[(message["device_id"], message["frame_id"])]
        assert page.goto(f"{scenario.url}events/{event_id}").status == 200
        flagged = message["flagged_by"]
        assert flagged == [0, 1]
        # The browser decoded every picture, at the size the server rendered.
        assert loaded(page, "#frame") == (28, 28)
        for k in flagged:
            assert loaded(page, f"#denoised-{k}") == loaded(page, f"#difference-{k}") == (224, 224)
        # What the page shows of the frame: each 8×8 block on screen is one pixel of the digit sent.
        # (The element may sit at a fractional offset: its screenshot can be a pixel taller; centres stay put.)
        shown = cv2.cvtColor(decode(page.locator("#frame").screenshot()), cv2.COLOR_BGR2GRAY)  # (≈224, ≈224)
        assert all(224 <= side <= 225 for side in shown.shape)
        assert np.abs(shown[4:224:8, 4:224:8].astype(int) - digit).mean() < 3
        # The PNGs behind the pictures: the frame is the evidence, the views are the bundle's own outputs.
        base = f"{scenario.url}events/{event_id}"
        assert np.array_equal(decode(page.request.get(f"{base}/frame.png").body()), digit)
        x = torch.from_numpy(digit[None, None] / 255.0).float()  # (1, 1, 28, 28)
        with torch.inference_mode():
            denoised = scenario.bundle.outputs(x)[0].denoised[:, 0, 0].numpy()  # (K, 28, 28)
        for k in flagged:
            view = decode(page.request.get(f"{base}/members/{k}/denoised.png").body())[::8, ::8] / 255.0
            assert np.abs(view - denoised[k]).max() <= 0.5 / 255 + 1e-6
            diff = np.abs(x[0, 0].numpy() - denoised[k])  # (28, 28)
            heat = decode(page.request.get(f"{base}/members/{k}/difference.png").body())[::8, ::8]
            brightness = heat.astype(int).sum(axis=2)
            assert brightness[np.unravel_index(diff.argmax(), diff.shape)] == brightness.max()
            assert np.corrcoef(brightness.ravel(), diff.ravel())[0, 1] > 0.9
            on_screen = decode(page.locator(f"#difference-{k}").screenshot())
            assert on_screen.std() > 20  # not blank, not one colour
        # Scores against thresholds, and every stored field.
        assert page.locator(".score.flagged").count() == 2
        fields = page.inner_text("table.fields")
        for name in ("device_id", "frame_id", "topic", "received_at", "decided_at", "thresholds", "image_sha256"):
            assert name in fields
        assert f"{message['thresholds'][0]:.6g}" in fields
        page.screenshot(path=scenario.artifacts / "event.png", full_page=True)

    def test_another_bundle_version_gets_a_notice(self, scenario: Scenario, page: Any) -> None:
        """Decided by mnist 0.9.0, reviewed with 1.0.0: the frame and fields, a notice, no denoised views."""
        page.goto(f"{scenario.url}events/{scenario.mismatch_id}")
        notice = page.inner_text("#views-notice")
        assert "0.9.0" in notice and "1.0.0" in notice
        assert page.locator("img[id^=denoised], img[id^=difference]").count() == 0
        assert loaded(page, "#frame") == (28, 28)
        page.screenshot(path=scenario.artifacts / "event-other-version.png", full_page=True)

    def test_unknown_event_is_404(self, scenario: Scenario, page: Any) -> None:
        response = page.goto(f"{scenario.url}events/999999")
        assert response.status == 404 and "no quarantine event with id 999999" in page.inner_text("#error")


class TestJsonApi:
    def test_same_routes_answer_json(self, scenario: Scenario, page: Any) -> None:
        """The list and every event in JSON agree with the page and with what the gateway published."""
        page.goto(scenario.url)
        listing = page.request.get(scenario.url, headers={"Accept": "application/json"}).json()
        assert [e["id"] for e in listing["events"]] == row_ids(page)
        assert listing["total"] == len(scenario.quarantined) + 1
        for event_id, message in scenario.quarantined.items():
            event = page.request.get(f"{scenario.url}events/{event_id}?format=json").json()
            for key in ("device_id", "frame_id", "label", "original_label", "flagged_by"):
                assert event[key] == message[key], key
            assert event["scores"] == pytest.approx(message["scores"], rel=1e-4)  # the message rounds to 6 decimals
            assert event["thresholds"] == pytest.approx(message["thresholds"], rel=1e-4)
            assert event["views"]["available"] and event["bundle_version"] == "1.0.0"


class TestPassword:
    def test_every_route_needs_it(self, scenario: Scenario) -> None:
        """With review.password set: 401 and a Basic challenge without credentials, pages and pictures alike."""
        event_id = min(scenario.quarantined)
        for path in ("", "?format=json", f"events/{event_id}", f"events/{event_id}/frame.png",
                     f"events/{event_id}/members/0/difference.png", "static/review.css"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(scenario.guarded_url + path, timeout=30)
            assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"].startswith("Basic ")

    def test_the_browser_gets_in_with_it(self, scenario: Scenario) -> None:
        context = scenario.browser.new_context(
            viewport=VIEWPORT, http_credentials={"username": "defed", "password": PASSWORD}
        )
        try:
            page = context.new_page()
            assert page.goto(scenario.guarded_url).status == 200
            assert len(row_ids(page)) == len(scenario.quarantined) + 1
        finally:
            context.close()
