"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from mutualat.train.logger import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _steps_per_epoch(records: list[dict[str, Any]]) -> float:
    """Training steps per epoch, from the first epoch record (or the first epoch's steps)."""
    for r in records:
        if r["event"] == "epoch" and r.get("epoch"):
            return r["global_step"] / r["epoch"]
    first = [r for r in records if r["event"] == "step" and r.get("epoch") == 1]
    return float(max((r["global_step"] for r in first), default=1)) or 1.0


def _roles(records: list[dict[str, Any]], prefix: str) -> list[str]:
    """Members that have a per-member ``prefix/<role>`` value (not per-threat sub-keys)."""
    return sorted({k.split("/", 1)[1] for r in records for k in r
                   if k.startswith(prefix + "/") and k.count("/") == 1})


def curves(run_dir: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """A run's curves from ``metrics.jsonl``, per member: ``{curve: {role: [(x, y), ...]}}``
    with x in epochs (validation and training adversarial accuracy at whole epochs, loss and
    learning rate at every step, as fractions of an epoch). Curves: ``val_clean``,
    ``val_pgd``, ``train_adv_acc`` (the epoch's mean over its steps), ``loss``, ``lr``."""
    records = read_metrics(run_dir)
    steps = [r for r in records if r["event"] == "step"]
    epochs = [r for r in records if r["event"] == "epoch"]
    per_epoch = _steps_per_epoch(records)
    out: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for key in ("val_clean", "val_pgd"):
        for role in _roles(epochs, key):
            out[key][role] = [(r["epoch"], r[f"{key}/{role}"]) for r in epochs if f"{key}/{role}" in r]
    for role in _roles(steps, "adv_acc"):
        sums: dict[int, list[float]] = defaultdict(list)
        for r in steps:
            if f"adv_acc/{role}" in r:
                sums[r["epoch"]].append(r[f"adv_acc/{role}"])
        out["train_adv_acc"][role] = [(e, sum(v) / len(v)) for e, v in sorted(sums.items())]
    for key in ("loss", "lr"):
        roles = _roles(steps, key)
        if not roles:  # logs from before per-member values: the run's single value
            roles, named = ["all"], {"all": key}
        else:
            named = {role: f"{key}/{role}" for role in roles}
        for role in roles:
            out[key][role] = [(r["global_step"] / per_epoch, r[named[role]]) for r in steps
                              if named[role] in r]
    return {k: dict(v) for k, v in out.items()}


def plot_training_curves(runs: dict[str, Path], out: Path) -> Path:
    """The PNG of :func:`training_curves_figure` for ``runs`` ({label: run folder})."""
    fig = training_curves_figure(runs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    _pyplot().close(fig)
    return out


def training_curves_figure(runs: dict[str, Path]):
    """Four panels, one colour per (run, member), x in epochs with whole-epoch ticks:
    validation accuracy (clean dashed, PGD solid), training adversarial accuracy (the epoch's
    mean over its batches), training loss and learning rate (every step)."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10.0, 7.0))
    (ax_val, ax_adv), (ax_loss, ax_lr) = axes
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    index = 0
    last_epoch = 1.0
    for name, run_dir in runs.items():
        data = curves(run_dir)
        roles = sorted({role for c in data.values() for role in c if role != "all"}) or ["all"]
        for role in roles:
            colour = colours[index % len(colours)]
            index += 1
            label = name if role in ("model", "all") else f"{name} {role}"
            for key, ax, style in (("val_pgd", ax_val, "-"), ("val_clean", ax_val, "--"),
                                   ("train_adv_acc", ax_adv, "-")):
                points = data.get(key, {}).get(role, [])
                if points:
                    ax.plot([x for x, _ in points], [100 * y for _, y in points], style,
                            marker="o", markersize=3, color=colour,
                            label=label if key in ("val_pgd", "train_adv_acc") else None)
                    last_epoch = max(last_epoch, points[-1][0])
            for key, ax in (("loss", ax_loss), ("lr", ax_lr)):
                points = data.get(key, {}).get(role) or data.get(key, {}).get("all", [])
                if points:
                    ax.plot([x for x, _ in points], [y for _, y in points], color=colour,
                            linewidth=0.8, label=label)
                    last_epoch = max(last_epoch, points[-1][0])
    ax_val.set_title("validation accuracy (PGD solid, clean dashed)")
    ax_val.set_ylabel("accuracy (%)")
    ax_adv.set_title("training adversarial accuracy (epoch mean)")
    ax_adv.set_ylabel("accuracy (%)")
    ax_loss.set_title("training loss")
    ax_lr.set_title("learning rate")
    if any(line.get_ydata().size and min(line.get_ydata()) > 0 for line in ax_lr.get_lines()):
        ax_lr.set_yscale("log")
    for ax in axes.flat:
        ax.set_xlabel("epoch")
        ax.set_xlim(0, max(1.0, last_epoch))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig
