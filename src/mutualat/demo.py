"""``mutualat demo``: adversarial training and a MAT cohort side by side, on CPU, in minutes.

Both runs use the embedded Fashion-MNIST subset (8,000 training images after the 20%
validation hold-out, 2,000 test images), the ~2-MFLOP ``tinycnn``, l-inf eps = 0.1 with a
PGD-10 training attack, and the same seed. A finished run is reused, an interrupted one
resumed, so running the demo twice costs nothing the second time.
"""

from __future__ import annotations

from pathlib import Path

from mutualat.config import RunConfig, load_config
from mutualat.experiments import run_or_reuse
from mutualat.methods import METHODS
from mutualat.report.plots import plot_training_curves

DEMO_EPOCHS = 4


def demo_configs(epochs: int, device: str) -> dict[str, RunConfig]:
    common = [
        "data.name=fashion-mnist-embedded",
        f"optim.epochs={epochs}",
        "attack.eps=0.1",
        "attack.steps=10",
        f"device={device}",
        "seed=0",
    ]
    runs = {"at": load_config(None, common + ["models.0.name=tinycnn", "method.name=at"])}
    if "mat" in METHODS:
        runs["mat"] = load_config(
            None,
            common + ["models.0.name=tinycnn", "models.1.name=tinycnn", "method.name=mat"],
        )
    return runs


def run_demo(out: Path, epochs: int | None = None, device: str = "auto") -> tuple[dict[str, dict], Path]:
    """Train (or reuse) both runs in ``out``; returns their results and the curves' PNG."""
    out = Path(out)
    results = {
        name: run_or_reuse(cfg, out / name)
        for name, cfg in demo_configs(epochs or DEMO_EPOCHS, device).items()
    }
    plot = plot_training_curves({name: out / name for name in results}, out / "demo.png")
    return results, plot
