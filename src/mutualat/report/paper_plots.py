"""PNG plots shaped like the MAT paper's figures (matplotlib, headless).

- :func:`plot_accuracy_vs_eps`: robust accuracy against the radius, one line per model;
- :func:`plot_eps_sweep`: the same for every threat of an ``eval --eps`` sweep, a panel each;
- :func:`plot_alpha_curve`: validation PGD accuracy against alpha (Fig. 3);
- :func:`plot_kd_scenarios`: clean and robust accuracy of the four KD scenarios (Fig. 2).

Inputs are accuracies as fractions in [0,1]; the axes show percent. Training curves are
:func:`mutualat.report.plots.plot_training_curves`.
"""

from __future__ import annotations

import math
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


def _alpha_series(values: Mapping[str | float, float | Mapping[str, float]],
                  default: str) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {}
    for alpha, v in values.items():
        items = v.items() if isinstance(v, Mapping) else [(default, v)]
        for role, acc in items:
            series.setdefault(str(role), []).append((float(alpha), float(acc)))
    return {role: sorted(points) for role, points in series.items()}


def plot_alpha_curve(values: Mapping[str | float, float | Mapping[str, float]], out: Path,
                     clean: Mapping[str | float, float | Mapping[str, float]] | None = None,
                     robust_label: str = "validation PGD accuracy (%)",
                     chosen: tuple[str | float, str] | str | float | None = None) -> Path:
    """``values[alpha]`` = validation PGD accuracy, or ``{line: accuracy}``: one line per key
    (a member, or a learning rate); a NaN (a diverged run) leaves a gap, marked with an x at
    the panel's foot. With ``clean``, of the same shape, a second panel below shows the
    validation clean accuracy on its own scale. ``chosen`` (an alpha, or an ``(alpha, line)``
    pair) rings the chosen point in both panels.

    Alpha keys may be strings (as JSON keeps them); they are sorted as numbers.
    """
    default = "val PGD"
    panels = [_alpha_series(values, default)]
    if clean is not None:
        panels.append(_alpha_series(clean, default))
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(5.0, 3.6 if clean is None else 5.4),
                             sharex=True, squeeze=False)
    axes = [row[0] for row in axes]
    pick = chosen if isinstance(chosen, tuple) or chosen is None else (chosen, default)
    for i, (ax, series) in enumerate(zip(axes, panels)):
        for n, (line, points) in enumerate(series.items()):
            ax.plot([a for a, _ in points], [100 * v for _, v in points], marker="o",
                    label=line, color=f"C{n}")
            if pick is not None and str(pick[1]) == line:
                hit = [v for a, v in points if a == float(pick[0])]
                if hit:
                    ax.plot([float(pick[0])], [100 * hit[0]], marker="o", markersize=12,
                            markerfacecolor="none", color="black", linestyle="none",
                            label="chosen" if i == 0 else None)
        foot, named = ax.get_ylim()[0], i > 0
        for n, (line, points) in enumerate(series.items()):
            gaps = [a for a, v in points if math.isnan(v)]
            if gaps:
                ax.plot(gaps, [foot] * len(gaps), marker="x", linestyle="none", color=f"C{n}",
                        label=None if named else "diverged")
                named = True
        ax.set_ylabel(robust_label if i == 0 else "validation clean (%)")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("alpha")
    if len(panels[0]) > 1 or pick is not None:
        axes[0].legend(fontsize=8)
    return _save(fig, out)


def plot_kd_scenarios(points: Mapping[str, Mapping[str, tuple[float, float]]], out: Path,
                      robust_label: str = "robust (PGD)",
                      spread: Mapping[str, Mapping[str, tuple[float, float]]] | None = None) -> Path:
    """``points[scenario][role] = (clean, robust)``: grouped bars, clean and robust per model;
    ``spread`` (the same keys: the std over seeds of each) draws error bars of ± one std."""
    plt = _pyplot()
    keys = [(scenario, role) for scenario, roles in points.items() for role in sorted(roles)]
    labels = [f"{scenario}\n{role}" for scenario, role in keys]
    xs = range(len(labels))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(labels) + 1), 3.8))
    for i, (offset, label) in enumerate(((-width / 2, "clean"), (width / 2, robust_label))):
        heights = [100 * points[s][r][i] for s, r in keys]
        errors = [100 * spread[s][r][i] for s, r in keys] if spread is not None else None
        ax.bar([x + offset for x in xs], heights, width, label=label, yerr=errors,
               capsize=3 if spread is not None else 0)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("test accuracy (%)" + (", mean ± std over seeds" if spread is not None else ""))
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)
