"""PNG plots (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(runs: dict[str, Path], out: Path) -> Path:
    """Validation clean (dashed) and PGD (solid) accuracy per epoch of every model of every run."""
    from mutualat.train.logger import read_metrics

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, run_dir in runs.items():
        epochs = [r for r in read_metrics(run_dir) if r["event"] == "epoch"]
        roles = sorted({k.split("/", 1)[1] for r in epochs for k in r if k.startswith("val_pgd/")})
        for role in roles:
            xs = [r["epoch"] for r in epochs if f"val_pgd/{role}" in r]
            label = name if role == "model" else f"{name} {role}"
            line, = ax.plot(xs, [100 * r[f"val_pgd/{role}"] for r in epochs if f"val_pgd/{role}" in r],
                            marker="o", label=f"{label} PGD")
            ax.plot(xs, [100 * r[f"val_clean/{role}"] for r in epochs if f"val_clean/{role}" in r],
                    linestyle="--", color=line.get_color(), label=f"{label} clean")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
