"""What the evaluation does differently per dataset; the bundle's input shape chooses the profile.

A profile holds the attack budgets and the attack settings that depend on the images, the
baselines' settings (Feature Squeezing's squeezers; MagNet's layout, detectors and training),
where the baselines' models are kept, and what the report must say about the images.

MNIST (1×28×28) is the committed report's setting. CIFAR-10 (3×32×32):
- budgets: L∞ ε 2/255, 4/255, 8/255 and L2 ε 0.25, 0.5, 1.0, the usual CIFAR-10 grid (issue 9);
  L∞ budgets are shown in grey levels ("8/255");
- PGD: 40 steps of ε/10 for both norms. The iterate can travel 4ε, so it reaches the edge of the
  ball and still has steps left to move along it (Madry et al. take 2.5ε/steps per step). MNIST's
  fixed L∞ step of 0.01 would be 2.5 grey levels, more than the 2/255 budget itself; a step in
  proportion to ε gives every budget the same search;
- Square: 500 queries per image (MNIST 300: there are 3,072 values to place squares on instead of
  784) and p_init 0.3, so the first squares are about 17 px wide, half the image (ART's and MNIST's
  0.8 would start with squares nearly as large as the image); the schedule halves p as queries
  are spent;
- C&W-L2: first step 0.01 (ART's default; MNIST 0.1): minimal L2 perturbations on CIFAR-10 are
  roughly an eighth of MNIST's (Carlini & Wagner, S&P 2017), and the line search still doubles
  the step where that lowers the loss. DeepFool as on MNIST (2 % overshoot, 10 candidate classes);
- JSMA is kept: ART's version takes the two most salient input values from one gradient of the
  target class per step (not the pair search over all 3,072² pairs of the paper), so a step costs
  one forward and one backward pass; at most 10 % of the values (307) change, ≤ 154 steps;
- Feature Squeezing: Xu et al.'s CIFAR-10 joint detector — 5-bit depth, 2×2 median filter and
  non-local means with a 13×13 search window, 3×3 patches and strength 2 (OpenCV), max L1 gap;
- MagNet: its CIFAR-10 setting — the flat autoencoder (three 3×3 convolutions, 3 channels, no
  pooling; `magnet.py`), detectors on the mean absolute reconstruction error and on the
  Jensen–Shannon divergence of f(x) and f(AE(x)) at temperatures 10 and 40, reformer AE(x);
  training noise 0.025; 10 epochs of 20,000 images instead of 400 full epochs (a CPU budget);
- adaptive attack: the threshold-relative penalty (`adaptive.py`), so that the weight λ = 10
  means the same whatever the bundle's score units: a score a tenth of its threshold above the
  aim costs as much as the logit margin κ = 1. The MNIST report keeps the absolute form it was
  made with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from defed_core.evaluation.adaptive import AdaptiveSpec
from defed_core.evaluation.attacks import (
    MNIST_ATTACKS,
    MNIST_EPS,
    AttackSettings,
    AttackSpec,
    Norm,
    attack_grid,
    budget_text,
)
from defed_core.evaluation.detectors import MagNetScores
from defed_core.evaluation.magnet import MagNetTraining


@dataclass(frozen=True)
class MagNetSetting:
    pooled: bool = True  # the MNIST layout; False: the flat CIFAR-10 one
    scores: MagNetScores = field(default_factory=MagNetScores)
    training: MagNetTraining = field(default_factory=MagNetTraining)


@dataclass(frozen=True)
class Profile:
    """Everything dataset-specific about one evaluation."""

    name: str
    input_shape: tuple[int, int, int]
    eps: dict[Norm, tuple[float, ...]]
    attacks: AttackSettings = MNIST_ATTACKS
    squeezers: tuple[str, ...] = ("bit-depth-1", "median-2x2")
    magnet: MagNetSetting = field(default_factory=MagNetSetting)
    linf_in_255ths: bool = False  # show L∞ budgets as "8/255"
    adaptive_penalty: Literal["absolute", "relative"] = "absolute"
    jpeg_note: str | None = None  # said wherever figures appear, when the data are stored as JPEG files
    jpeg_caption: str | None = None  # the same, short enough for a figure
    report_notes: tuple[str, ...] = ()  # sentences results.md adds under its heading

    @property
    def basenet_preset(self) -> str:
        return f"{self.name}-basenet"

    @property
    def default_basenet(self) -> str:
        return f"eval-models/{self.name}-basenet"

    @property
    def default_magnet(self) -> str:
        return f"eval-models/{self.name}-magnet"

    def eps_text(self, norm: str, eps: float) -> str:
        return budget_text(eps, self.linf_in_255ths and norm == "linf")

    def grid(self, names: tuple[str, ...], seed: int = 0) -> list[AttackSpec]:
        return attack_grid(names, self.eps, self.attacks, seed, self.linf_in_255ths)

    def adaptive_specs(self, steps: int, seed: int = 0) -> list[AdaptiveSpec]:
        norms: tuple[Literal["linf", "l2"], ...] = ("linf", "l2")
        return [AdaptiveSpec(norm, eps, steps=steps, seed=seed, penalty=self.adaptive_penalty,
                             eps_text=self.eps_text(norm, eps)) for norm in norms for eps in self.eps[norm]]

    def record(self) -> dict[str, Any]:
        """The profile as plain data, for results.json."""
        return asdict(self)


MNIST = Profile("mnist", (1, 28, 28), MNIST_EPS)

CIFAR10 = Profile(
    "cifar10",
    (3, 32, 32),
    {"linf": (2 / 255, 4 / 255, 8 / 255), "l2": (0.25, 0.5, 1.0)},
    attacks=AttackSettings(pgd_steps=40, pgd_linf_step=None, pgd_linf_divisor=10.0, pgd_l2_divisor=10.0,
                           square_queries=500, square_p_init=0.3, cw_learning_rate=0.01),
    squeezers=("bit-depth-5", "median-2x2", "non-local-means-13-3-2"),
    magnet=MagNetSetting(pooled=False, scores=MagNetScores("l1", (10.0, 40.0)),
                         training=MagNetTraining(epochs=10, images_per_epoch=20_000, noise=0.025)),
    linf_in_255ths=True,
    adaptive_penalty="relative",
    jpeg_note="The CIFAR-10 images are JPEG-compressed (quality 75, 4:2:0), as stored in the dataset file, and "
              "decoded the way camera frames are: every rate and figure here is on these JPEG images.",
    jpeg_caption="CIFAR-10 test images, JPEG-compressed as stored (quality 75, 4:2:0)",
    report_notes=(
        "CIFAR-10 settings (reasons in `defed_core/evaluation/profiles.py`): PGD 40 steps of ε/10; Square 500 "
        "queries, p_init 0.3; Feature Squeezing with Xu et al.'s CIFAR-10 squeezers (5-bit depth, 2×2 median "
        "filter, non-local means 13-3-2); MagNet-style with Meng & Chen's CIFAR-10 autoencoder (three 3×3 "
        "convolutions, 3 channels) and detectors (mean absolute reconstruction error, Jensen–Shannon divergence "
        "at T = 10 and T = 40), its three scores standardised on the validation split and flagged above one "
        "common threshold, as the Defed members are.",
    ),
)

PROFILES = {p.name: p for p in (MNIST, CIFAR10)}


def profile_for(input_shape: tuple[int, int, int]) -> Profile:
    """The profile of a bundle's input shape: 1×28×28 → MNIST, 3×32×32 → CIFAR-10."""
    for profile in PROFILES.values():
        if tuple(input_shape) == profile.input_shape:
            return profile
    shapes = ", ".join(f"{'×'.join(map(str, p.input_shape))} ({p.name})" for p in PROFILES.values())
    raise ValueError(f"no evaluation profile for input shape {'×'.join(map(str, input_shape))}: "
                     f"the harness knows {shapes}")
