"""PNG plots shaped like the MAT paper's figures (matplotlib, headless).

- :func:`plot_accuracy_vs_eps`: robust accuracy against the radius, one line per model;
- :func:`plot_eps_sweep`: the same for every threat of an ``eval --eps`` sweep, a panel each;
- :func:`plot_alpha_curve`: validation PGD accuracy against alpha (Fig. 3);
- :func:`plot_kd_scenarios`: clean and robust accuracy of the four KD scenarios (Fig. 2).

Inputs are accuracies as fractions in [0,1]; the axes show percent. Training curves are
:func:`mutualat.report.plots.plot_training_curves`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def plot_accuracy_vs_eps(curves: Mapping[str, Sequence[tuple[float, float]]], out: Path,
                         norm: str = "linf") -> Path:
    """``curves[model] = [(eps, accuracy), ...]``: accuracy (%) against eps, one line per model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for model, points in curves.items():
        points = sorted(points)
        ax.plot([e for e, _ in points], [100 * a for _, a in points], marker="o", label=model)
    ax.set_xlabel(f"{norm} eps")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_eps_sweep(sweep: Mapping[str, Mapping[str, object]], out: Path) -> Path:
    """An eps sweep (:func:`mutualat.evaluation.sweep.eps_sweep`), one panel per threat:
    ``sweep[threat] = {"norm": ..., "curves": {model: [(eps, accuracy), ...]}}``; accuracy
    at eps 0 is the clean accuracy."""
    plt = _pyplot()
    threats = list(sweep)
    fig, axes = plt.subplots(1, len(threats), figsize=(4.8 * len(threats), 3.8), squeeze=False)
    for ax, threat in zip(axes[0], threats):
        entry = sweep[threat]
        for model, points in entry["curves"].items():
            points = sorted((float(e), float(a)) for e, a in points)
            ax.plot([e for e, _ in points], [100 * a for _, a in points], marker="o", label=model)
        norm = entry.get("norm")
        ax.set_title(threat)
        ax.set_xlabel(f"{norm} eps" if norm else f"{threat} strength")
        ax.set_ylabel("robust accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_alpha_curve(values: Mapping[str | float, float | Mapping[str, float]], out: Path,
                     clean: Mapping[str | float, float] | None = None,
                     robust_label: str = "validation PGD accuracy (%)",
                     chosen: str | float | None = None) -> Path:
    """``values[alpha]`` = validation PGD accuracy, or ``{role: accuracy}``: one line per role.
    With ``clean`` (``clean[alpha]`` = validation clean accuracy) a second panel below shows
    it on its own scale; ``chosen`` rings the chosen alpha's points.

    Alpha keys may be strings (as JSON keeps them); they are sorted as numbers.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    for alpha, v in values.items():
        items = v.items() if isinstance(v, Mapping) else [("val PGD", v)]
        for role, acc in items:
            series.setdefault(str(role), []).append((float(alpha), float(acc)))
    plt = _pyplot()
    if clean is None:
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
        axes = [ax]
    else:
        fig, axes = plt.subplots(2, 1, figsize=(5.0, 5.4), sharex=True)
        ax = axes[0]
    for role, points in series.items():
        points.sort()
        ax.plot([a for a, _ in points], [100 * v for _, v in points], marker="o", label=role)
    ax.set_ylabel(robust_label)
    if clean is not None:
        points = sorted((float(a), float(v)) for a, v in clean.items())
        axes[1].plot([a for a, _ in points], [100 * v for _, v in points], marker="o",
                     color="tab:gray")
        axes[1].set_ylabel("validation clean (%)")
    if chosen is not None:
        for panel, data in zip(axes, [values, clean]):
            v = data.get(str(chosen), data.get(float(chosen))) if data is not None else None
            if isinstance(v, (int, float)):
                panel.plot([float(chosen)], [100 * v], marker="o", markersize=12,
                           markerfacecolor="none", color="tab:red", linestyle="none",
                           label="chosen" if panel is ax else None)
    axes[-1].set_xlabel("alpha")
    for panel in axes:
        panel.grid(alpha=0.3)
    if len(series) > 1 or chosen is not None:
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_kd_scenarios(points: Mapping[str, Mapping[str, tuple[float, float]]], out: Path,
                      robust_label: str = "robust (PGD)") -> Path:
    """``points[scenario][role] = (clean, robust)``: grouped bars, clean and robust per model."""
    plt = _pyplot()
    labels, clean, robust = [], [], []
    for scenario, roles in points.items():
        for role, (c, r) in sorted(roles.items()):
            labels.append(f"{scenario}\n{role}")
            clean.append(100 * c)
            robust.append(100 * r)
    xs = range(len(labels))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(labels) + 1), 3.8))
    ax.bar([x - width / 2 for x in xs], clean, width, label="clean")
    ax.bar([x + width / 2 for x in xs], robust, width, label=robust_label)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)
