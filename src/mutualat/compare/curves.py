"""The comparison's ``curves.png``: per epoch, validation clean and robust accuracy and the
training adversarial accuracy of every variant's chosen run (first seed), with the learning
rate's decays marked, so robust overfitting shows; and the report's robust-overfitting
table, the same curves' best and last epochs for every seed (:func:`overfitting`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mutualat.compare.study import Study
from mutualat.train.logger import read_metrics


def epoch_curves(run_dir: Path, roles: list[str] | None = None) -> dict[str, list[float]]:
    """Per epoch, mean over the trained members (or the members ``roles``): validation clean
    and PGD accuracy, the training adversarial accuracy (mean over the epoch's steps) and the
    learning rate."""
    records = read_metrics(run_dir)
    epochs = [r for r in records if r["event"] == "epoch"]
    steps = [r for r in records if r["event"] == "step"]

    def members(record: dict[str, Any], prefix: str) -> float | None:
        values = [v for k, v in record.items() if k.startswith(prefix) and k.count("/") == 1
                  and (roles is None or k.split("/", 1)[1] in roles)]
        return sum(values) / len(values) if values else None

    train_adv, lr = [], []
    for e in (r["epoch"] for r in epochs):  # the records' own numbers: one may be missing
        mine = [r for r in steps if r.get("epoch") == e]
        accs = [a for a in (members(r, "adv_acc/") for r in mine) if a is not None]
        train_adv.append(sum(accs) / len(accs) if accs else float("nan"))
        rates = [next(iter(r["lr"].values())) if isinstance(r.get("lr"), dict) else r.get("lr")
                 for r in mine]
        lr.append(rates[-1] if rates else float("nan"))
    return {"epoch": [r["epoch"] for r in epochs],
            "val_clean": [members(r, "val_clean/") for r in epochs],
            "val_pgd": [members(r, "val_pgd/") for r in epochs],
            "train_adv": train_adv, "lr": lr}


def overfitting(study: Study) -> dict[str, Any]:
    """Per variant, each seed's chosen run: the epoch of its best validation robust accuracy
    (the mean over the members the variant is judged by; the first epoch on ties), that
    accuracy, the last epoch's, and the last epoch's validation clean and training
    adversarial accuracy. A fall from the best to the last is robust overfitting."""
    plan = study.plan
    out: dict[str, Any] = {}
    for variant in plan.variants:
        chosen = study.selection(variant)
        per_seed = {}
        for seed in plan.seeds:
            curves = epoch_curves(study.run_dir(variant, chosen.chosen, seed),
                                  plan.select_on.get(variant))
            pgd = curves["val_pgd"]
            best = max(range(len(pgd)), key=lambda e: (pgd[e], -e))
            epochs = plan.config(variant, chosen.chosen, seed).optim.epochs
            per_seed[seed] = {"epochs": epochs, "best_epoch": curves["epoch"][best], "best": pgd[best],
                              "last": pgd[-1], "drop": pgd[best] - pgd[-1],
                              "last_clean": curves["val_clean"][-1],
                              "last_train_adv": curves["train_adv"][-1]}
        cfg = plan.config(variant, chosen.chosen, plan.grid_seed)
        out[variant] = {"seeds": per_seed, "val_images": cfg.data.val_subset,
                        "val_steps": cfg.eval.pgd_steps}
    return out


def plot_curves(study: Study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plan = study.plan
    variants = list(plan.variants)
    cols = min(3, len(variants))
    rows = (len(variants) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, variant in zip(axes.flat, variants):
        chosen = study.selection(variant)
        curves = epoch_curves(study.run_dir(variant, chosen.chosen, plan.grid_seed),
                              plan.select_on.get(variant))
        x = curves["epoch"]
        ax.plot(x, [100 * v for v in curves["val_clean"]], label="val clean")
        ax.plot(x, [100 * v for v in curves["val_pgd"]], label="val PGD")
        ax.plot(x, [100 * v for v in curves["train_adv"]], label="train adversarial", linestyle="--")
        optim = plan.config(variant, chosen.chosen, plan.grid_seed).optim
        for fraction in optim.milestones:  # the learning-rate decays (stepped per batch)
            ax.axvline(fraction * optim.epochs, color="grey", linewidth=0.6, linestyle=":")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 100)
        ax.set_title(f"{variant} ({chosen.label})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(variants):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{plan.name}: seed {plan.grid_seed}, chosen settings (dotted: lr decays)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
