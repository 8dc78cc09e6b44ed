"""`defed simulate`: a camera fleet publishing real test images, some attacked, and what the gateway answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import click

from gateway.commands.common import bundle_option, guard, load_bundle
from gateway.simulator import ATTACKS, BUDGETS, PGD_STEPS, AttackName, FramePool, ImageFormat, pixel_value

# Enough images for variety; attacking more would only lengthen the start.
MAX_IMAGES = 256
# After the last frame: how long to wait for the gateway to answer the frames still in flight
# (a colour bundle on a busy 2-core machine can lag by seconds; the wait ends at the last answer).
ANSWER_TIMEOUT_S = 30.0


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


class PixelBudget(click.ParamType[float]):
    """An L∞ budget on pixels in [0, 1]: a number or a fraction such as 8/255."""

    name = "EPS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        numerator, _, denominator = str(value).partition("/")
        try:
            eps = float(numerator) / float(denominator or 1)
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a number or a fraction like 8/255", param, ctx)
        if not 0 < eps <= 1:
            self.fail(f"{value!r} is not in (0, 1]", param, ctx)
        return eps


def budget_defaults() -> str:
    return ", ".join(
        f"{name} {pixel_value(b.eps)} (PGD: {PGD_STEPS} steps of ε/{b.eps / b.pgd_step:.0f})"
        for name, b in BUDGETS.items()
    )


def fleet_options(function: Any) -> Any:
    """The options `simulate` and `demo` share."""
    options = [
        click.option(
            "--devices",
            type=click.IntRange(1, 1000),
            default=4,
            show_default=True,
            help="Camera devices, each publishing on cameras/cam-XX/frames.",
        ),
        click.option(
            "--fps",
            type=click.FloatRange(0.01, 1000),
            default=5.0,
            show_default=True,
            help="Frames per second per device (the fleet sends devices × fps).",
        ),
        click.option(
            "--adversarial-rate",
            type=click.FloatRange(0, 1),
            default=0.2,
            show_default=True,
            help="Fraction of frames replaced by an adversarial example.",
        ),
        click.option(
            "--attack",
            type=click.Choice(sorted(ATTACKS)),
            default="fgsm",
            show_default=True,
            help="White-box L∞ attack against the bundle's classifier (budget: --epsilon).",
        ),
        click.option(
            "--epsilon",
            type=PixelBudget(),
            default=None,
            help=f"The attack's L∞ budget on pixels in [0, 1], e.g. 0.1 or 4/255 (default by the bundle's data: "
            f"{budget_defaults()}).",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["png", "jpeg"]),
            default=None,
            help="Image encoding of the frames (default: jpeg for a colour bundle, png for a grayscale one).",
        ),
        click.option(
            "--envelope",
            is_flag=True,
            help="Send JSON envelopes {frame_id, ts, image} instead of bare images with MQTT 5 user properties.",
        ),
        bundle_option,
        click.option(
            "--data",
            type=click.Path(path_type=Path),
            default=None,
            help="Dataset whose test split provides the images (default: a shipped sample of "
            "256 test images, CIFAR-10 for a colour bundle, MNIST for a grayscale one).",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def build_frames(
    bundle_ref: str, data: Path | None, attack_name: str, epsilon: float | None = None, fmt: ImageFormat | None = None
) -> FramePool:
    """The bundle's classifier attacked once, up front, on test images that suit it."""
    from defed_core.data import load_dataset, load_sample
    from gateway.simulator import default_format, sample_for

    attack = cast(AttackName, attack_name)  # one of ATTACKS: click checked it
    with guard():
        bundle = load_bundle(bundle_ref, "cpu")
        c, h, w = bundle.input_shape
        sample = sample_for(bundle)
        budget = BUDGETS[sample] if epsilon is None else BUDGETS[sample].with_eps(epsilon)
        fmt = fmt or default_format(bundle)
        images = load_sample(sample) if data is None else load_dataset(data, channels=c, size=(h, w)).test
        images = images.head(MAX_IMAGES)
        source = f"the shipped {sample} sample" if data is None else str(data)
        click.echo(
            f"attacking {len(images)} test images of {source} with {attack} ({budget.describe(attack)}) …", err=True
        )
        frames = FramePool.build(bundle, images.images, images.labels, attack, budget, fmt)
    click.echo(f"{len(frames.adversarial)} successful adversarial examples; frames sent as {fmt}", err=True)
    return frames


@click.command()
@click.option("--broker", type=BrokerAddress(), required=True, help="The MQTT broker, HOST:PORT.")
@click.option("--duration", type=click.FloatRange(0.1), default=10.0, show_default=True, help="Seconds of publishing.")
@fleet_options
def simulate(
    broker: tuple[str, int],
    duration: float,
    devices: int,
    fps: float,
    adversarial_rate: float,
    attack: str,
    epsilon: float | None,
    fmt: ImageFormat | None,
    envelope: bool,
    bundle_ref: str,
    data: Path | None,
) -> None:
    """A camera fleet publishing real test images, some attacked; prints what the gateway answered."""
    from gateway.simulator import Fleet

    frames = build_frames(bundle_ref, data, attack, epsilon, fmt)
    host, port = broker
    fleet = Fleet(host, port, frames, devices=devices, fps=fps, adversarial_rate=adversarial_rate, envelope=envelope)
    with fleet:
        try:
            fleet.run(duration)
            fleet.wait_for_answers(ANSWER_TIMEOUT_S)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
    click.echo(fleet.measurement.summary().render())
