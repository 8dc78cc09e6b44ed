"""`defed simulate`: a camera fleet publishing real test images, some attacked, and what the gateway answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click

from gateway.commands.common import bundle_option, guard, load_bundle
from gateway.simulator import ATTACKS, AttackName, FramePool, ImageFormat

# Enough images for variety; attacking more would only lengthen the start.
MAX_IMAGES = 256
# After the last frame: how long to wait for the gateway to answer the frames still in flight.
ANSWER_TIMEOUT_S = 15.0


class BrokerAddress(click.ParamType[tuple[str, int]]):
    """HOST:PORT."""

    name = "HOST:PORT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        host, sep, port = str(value).rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            self.fail(f"{value!r} is not HOST:PORT", param, ctx)
        return host, int(port)


def fleet_options(function: Any) -> Any:
    """The options `simulate` and `demo` share."""
    options = [
        click.option("--devices", type=click.IntRange(1, 1000), default=4, show_default=True,
                     help="Camera devices, each publishing on cameras/cam-XX/frames."),
        click.option("--fps", type=click.FloatRange(0.01, 1000), default=5.0, show_default=True,
                     help="Frames per second per device (the fleet sends devices × fps)."),
        click.option("--adversarial-rate", type=click.FloatRange(0, 1), default=0.2, show_default=True,
                     help="Fraction of frames replaced by an adversarial example."),
        click.option("--attack", type=click.Choice(sorted(ATTACKS)), default="fgsm", show_default=True,
                     help="Attack against the bundle's classifier, ε=0.3 (L∞)."),
        click.option("--format", "fmt", type=click.Choice(["png", "jpeg"]), default="png", show_default=True,
                     help="Image encoding of the frames."),
        click.option("--envelope", is_flag=True,
                     help="Send JSON envelopes {frame_id, ts, image} instead of bare images with "
                          "MQTT 5 user properties."),
        bundle_option,
        click.option("--data", type=click.Path(path_type=Path), default=None,
                     help="Dataset whose test split provides the images (default: the shipped sample "
                          "of 256 MNIST test images)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def build_frames(bundle_ref: str, data: Path | None, attack: str) -> FramePool:
    """The bundle's classifier attacked once, up front, on the test images."""
    from defed_core.data import load_dataset, load_sample

    with guard():
        bundle = load_bundle(bundle_ref, "cpu")
        c, h, w = bundle.input_shape
        images = load_sample("mnist") if data is None else load_dataset(data, channels=c, size=(h, w)).test
        images = images.head(MAX_IMAGES)
        click.echo(f"attacking {len(images)} test images with {attack} (ε=0.3) …", err=True)
        frames = FramePool.build(bundle, images.images, images.labels, cast(AttackName, attack))
    click.echo(f"{len(frames.adversarial)} successful adversarial examples", err=True)
    return frames


@click.command()
@click.option("--broker", type=BrokerAddress(), required=True, help="The MQTT broker, HOST:PORT.")
@click.option("--duration", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds of publishing.")
@fleet_options
def simulate(broker: tuple[str, int], duration: float, devices: int, fps: float, adversarial_rate: float,
             attack: str, fmt: ImageFormat, envelope: bool, bundle_ref: str, data: Path | None) -> None:
    """A camera fleet publishing real test images, some attacked; prints what the gateway answered."""
    from gateway.simulator import Fleet

    frames = build_frames(bundle_ref, data, attack)
    host, port = broker
    fleet = Fleet(host, port, frames, devices=devices, fps=fps, adversarial_rate=adversarial_rate, fmt=fmt,
                  envelope=envelope)
    with fleet:
        try:
            fleet.run(duration)
            fleet.wait_for_answers(ANSWER_TIMEOUT_S)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
    click.echo(fleet.measurement.summary().render())
