"""Colour end to end: a 3×32×32 bundle behind a real gateway and mosquitto, fed CIFAR-10 JPEG and PNG frames."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gateway_helpers import Camera, GatewayProcess, ResultListener, envelope, gateway_settings
from torch import nn

from defed_core import Bundle
from defed_core.data import load_sample, to_tensor
from defed_core.testing import untrained_bundle
from gateway.broker import PrivateBroker
from gateway.cli import main
from gateway.commands.simulate import PixelBudget
from gateway.simulator import BUDGETS, Budget, default_format, encode, pixel_value, sample_for

COLOUR = (3, 32, 32)
# These tests share two cores with training runs: a VGG bundle may take minutes to build and load.
STARTUP_TIMEOUT_S = 480.0
pytestmark = pytest.mark.timeout(1200)


def sample_jpeg_files() -> list[bytes]:
    """The shipped CIFAR-10 sample's JPEG files as stored: what a camera sends."""
    with np.load(str(resources.files("defed_core") / "samples" / "cifar10-test-sample.npz")) as z:
        return [z["jpeg"][a:b].tobytes() for a, b in itertools.pairwise(z["offsets"])]


@pytest.fixture(scope="module")
def colour_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 3×32×32 bundle whose classifier's batch-norm statistics come from the CIFAR-10 sample.

    With its initial statistics an untrained VGG answers one class whatever the input, so no attack
    could fool it; with these, its answers depend on the image (and on its channel order).
    """
    path = tmp_path_factory.mktemp("bundles") / "colour"
    bundle = untrained_bundle(input_shape=COLOUR)
    classifier = bundle.classifier
    for module in classifier.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the one pass below
    classifier.train()
    with torch.no_grad():
        classifier(to_tensor(load_sample("cifar10").images))
    classifier.eval()
    bundle.save(path)
    return path


@contextmanager
def running_gateway(settings: dict[str, Any], workdir: Path) -> Iterator[GatewayProcess]:
    """The gateway subprocess, given STARTUP_TIMEOUT_S to send READY=1."""
    gateway = GatewayProcess(settings, workdir)
    try:
        yield gateway.start(timeout=STARTUP_TIMEOUT_S)
    finally:
        gateway.stop()


@pytest.fixture
def camera(broker: PrivateBroker) -> Iterator[Camera]:
    cam = Camera(broker.port)
    yield cam
    Camera.open_cameras.remove(cam)
    cam.close()


def classifier_labels(bundle_path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f(x) for uint8 (N, H, W, C) images, and the margin of its top logit over the next."""
    bundle = Bundle.load(bundle_path, "cpu")
    with torch.no_grad():
        logits = bundle.classifier(to_tensor(images))  # (N, 10)
    top2 = logits.topk(2, dim=1).values
    return logits.argmax(1).numpy(), (top2[:, 0] - top2[:, 1]).numpy()


class TestColourGateway:
    def test_jpeg_and_png_frames_bare_and_enveloped_get_one_result_each(
        self, colour_bundle: Path, broker: PrivateBroker, listener: ResultListener, camera: Camera, tmp_path: Path
    ) -> None:
        """CIFAR-10 frames as JPEG and PNG, bare and enveloped: one label or quarantine each, f(x) as computed here."""
        sample, files = load_sample("cifar10"), sample_jpeg_files()
        sent: dict[tuple[str, str], int] = {}  # key -> sample index
        settings = gateway_settings(tmp_path / "state", broker.port, colour_bundle)
        with running_gateway(settings, tmp_path) as gateway:
            for i in range(24):
                fmt, wrapping = ("jpeg", "png")[i % 2], ("bare", "envelope")[i // 2 % 2]
                data = files[i] if fmt == "jpeg" else encode(sample.images[i], "png")
                device, frame_id = f"cam{i % 3}", f"{fmt}-{wrapping}-{i}"
                if wrapping == "envelope":
                    camera.send(device, envelope(data, frame_id, ts=1.0 + i))
                else:
                    camera.send(device, data, frame_id=frame_id, ts=1.0 + i)
                sent[(device, frame_id)] = i
            camera.flush()
            assert listener.wait_for_frames(set(sent), timeout=120), (listener.missing(set(sent)), gateway.log())
            answers = Counter((p["device_id"], p["frame_id"]) for _, p in listener.results())
            events = {(p["device_id"], p["frame_id"]): (t, p) for t, p in listener.results()}
        assert all(answers[key] == 1 for key in sent), answers
        expected, margin = classifier_labels(colour_bundle, sample.images[:24])
        for key, i in sent.items():
            topic, event = events[key]
            assert topic in (f"defed/{key[0]}/label", f"defed/{key[0]}/quarantine"), (topic, event)
            seen = event["original_label"] if event["adversarial"] else event["label"]
            if margin[i] > 1e-3:  # a near tie could go either way between batch sizes
                assert seen == expected[i], (key, event)


class TestSimulateColour:
    def test_simulate_colour_bundle_every_frame_answered(
        self, colour_bundle: Path, broker: PrivateBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`defed simulate --bundle <colour bundle>`: the CIFAR-10 sample, 8/255 attacks, JPEG frames, all answered."""
        settings = gateway_settings(tmp_path / "state", broker.port, colour_bundle)
        with running_gateway(settings, tmp_path):
            fleet = ["--devices", "2", "--fps", "3", "--duration", "3", "--adversarial-rate", "0.3"]
            code = main(["simulate", "--broker", broker.address, "--bundle", str(colour_bundle), *fleet])
        captured = capsys.readouterr()
        assert code == 0, captured
        assert "shipped cifar10 sample" in captured.err and "ε=8/255" in captured.err, captured.err
        assert "sent as jpeg" in captured.err, captured.err
        sent = int(re.search(r"^frames sent\s+(\d+)", captured.out, re.MULTILINE).group(1))  # type: ignore[union-attr]
        answered = int(re.search(r"^answered\s+(\d+)", captured.out, re.MULTILINE).group(1))  # type: ignore[union-attr]
        attacked = int(re.search(r"\((\d+) attacked", captured.out).group(1))  # type: ignore[union-attr]
        assert sent >= 12 and answered == sent and attacked > 0, captured.out


class TestFleetDefaults:
    def test_sample_budget_and_format_follow_the_bundle(self, colour_bundle: Path) -> None:
        """A colour bundle gets the CIFAR-10 sample, ε=8/255 and JPEG; the gray mnist one MNIST, ε=0.3 and PNG."""
        colour, gray = Bundle.load(colour_bundle, "cpu"), Bundle.load_default("mnist", "cpu")
        assert (sample_for(colour), default_format(colour)) == ("cifar10", "jpeg")
        assert (sample_for(gray), default_format(gray)) == ("mnist", "png")
        assert BUDGETS["cifar10"] == Budget(8 / 255, 1 / 255) and BUDGETS["mnist"].eps == 0.3

    def test_recorded_training_data_wins_over_channels(self) -> None:
        """A gray bundle trained on CIFAR-10 (as recorded in bundle.json) is attacked at CIFAR-10's budget."""
        gray = Bundle.load_default("mnist", "cpu")
        bundle = Bundle(replace(gray.spec, dataset={"source": "cifar10-jpeg.npz"}), gray.classifier, gray.denoisers)
        assert sample_for(bundle) == "cifar10"

    def test_epsilon_override_keeps_the_pgd_step_ratio(self) -> None:
        """--epsilon 4/255 on CIFAR-10 steps PGD by 0.5/255; the budget prints in 255ths."""
        budget = BUDGETS["cifar10"].with_eps(4 / 255)
        assert budget.pgd_step == pytest.approx(0.5 / 255)
        assert pixel_value(8 / 255) == "8/255" and pixel_value(0.3) == "0.3"

    @pytest.mark.parametrize("command", ["simulate", "demo"])
    def test_help_names_both_defaults(self, command: str, capsys: pytest.CaptureFixture[str]) -> None:
        """--help gives the bundle-dependent defaults: sample, ε and format for colour and gray bundles."""
        assert main([command, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        for phrase in ("--epsilon", "cifar10 8/255", "mnist 0.3", "jpeg for a colour bundle", "CIFAR-10 for a colour"):
            assert phrase in text, phrase

    def test_epsilon_takes_a_fraction_of_255(self) -> None:
        """--epsilon accepts 4/255 as well as 0.1."""
        assert PixelBudget().convert("4/255", None, None) == pytest.approx(4 / 255)
        assert PixelBudget().convert("0.1", None, None) == pytest.approx(0.1)

    @pytest.mark.parametrize("value", ["x", "1/0", "2", "0", "nan"])
    def test_bad_epsilon_is_one_line(self, value: str, capsys: pytest.CaptureFixture[str]) -> None:
        """An ε that is not in (0, 1]: one line on stderr naming --epsilon, exit 2, before anything is loaded."""
        assert main(["simulate", "--broker", "127.0.0.1:1", "--epsilon", value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--epsilon" in err, err
