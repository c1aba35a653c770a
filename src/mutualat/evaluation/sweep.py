"""Robust accuracy against the radius: one suite evaluated at several eps per threat.

``eval --eps 0.05,0.1,0.2`` (the suite's single lp threat) or ``--eps linf=2/255,8/255
--eps l2=0.25,0.5`` (named threats). Each point is an ordinary evaluation of the suite's
attacks of that threat at that radius, in ``OUT/eps/<threat>-<eps>/`` (so each point resumes
on its own and keeps its per-example matrices); the sweep writes ``OUT/eps_sweep.json``, a
Markdown table ``OUT/eps_sweep.md`` and ``OUT/eps_sweep.png`` (a panel per threat, a line per
model, clean accuracy at eps 0).

The gradient-masking checks, when asked for, run once per threat, at its largest eps.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from mutualat.errors import ConfigError
from mutualat.evaluation.evaluator import evaluate
from mutualat.evaluation.suite import Suite
from mutualat.report.paper_plots import plot_eps_sweep
from mutualat.report.tables import markdown_table
from mutualat.files import atomic_write_bytes

logger = logging.getLogger(__name__)


def parse_eps(items: Sequence[str], suite: Suite) -> dict[str, list[float]]:
    """``["0.1,0.2"]`` or ``["linf=0.01,0.03", "l2=0.5"]`` -> ``{threat: [eps, ...]}``.

    An item without ``THREAT=`` addresses the suite's single lp threat. Values may be
    fractions (``8/255``). Each list is sorted and deduplicated.
    """
    points: dict[str, list[float]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep:
            lp = suite.lp_threats()
            if len(lp) != 1:
                raise ConfigError(
                    f"suite {suite.name!r} has {len(lp)} lp threats ({', '.join(lp)}"
                    f"); say which with --eps THREAT=E[,E...]")
            name, values = next(iter(lp)), item
        if name not in suite.threats:
            raise ConfigError(f"--eps {item}: suite {suite.name!r} has no threat {name!r}; "
                              f"its threats: {', '.join(suite.threats)}")
        points.setdefault(name, []).extend(_number(v, item) for v in values.split(",") if v.strip())
    for name, values in points.items():
        if not values:
            raise ConfigError(f"--eps: no value for threat {name!r}")
        points[name] = sorted(set(values))
    return points


def _number(text: str, item: str) -> float:
    text = text.strip()
    try:
        if "/" in text:  # 8/255, as papers write l-inf radii
            num, den = text.split("/", 1)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--eps {item}: {text!r} is not a number") from None


def point_dir(out: Path, threat: str, eps: float) -> Path:
    return Path(out) / "eps" / f"{threat}-{eps:.6g}"


def eps_sweep(
    models: Mapping[str, nn.Module],
    suite: Suite,
    points: Mapping[str, Sequence[float]],
    images: Any,
    labels: Any,
    out_dir: str | Path,
    *,
    checks: Any = True,
    **evaluate_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate ``suite`` restricted to each threat of ``points`` at each of its eps (see the
    module docstring); returns the sweep record written to ``out_dir/eps_sweep.json``::

        {threat: {"norm", "eps": [...], "clean": {model: acc},
                  "accuracy": {model: [acc at each eps]}, "folders": [...]}}

    ``evaluate_kwargs`` go to :func:`~mutualat.evaluation.evaluate` (batch_size, device,
    seed, ensemble, progress, data_info, model_info, amp, preprocessing).
    """
    out = Path(out_dir)
    record: dict[str, Any] = {}
    for threat, values in points.items():
        base = suite.only(threat)
        entry: dict[str, Any] = {"norm": base.threats[threat].norm, "eps": list(values),
                                 "clean": {}, "accuracy": {}, "folders": []}
        for i, eps in enumerate(values):
            folder = point_dir(out, threat, eps)
            logger.info(f"eps sweep: {threat} eps={eps:g} ({i + 1}/{len(values)}) in {folder}")
            last = i == len(values) - 1
            summary = evaluate(models, base.with_threat_eps(threat, eps), images, labels, folder,
                               checks=checks if last else False, **evaluate_kwargs)
            entry["folders"].append(str(folder.relative_to(out)))
            for name, m in summary["models"].items():
                entry["clean"][name] = m["clean"]
                entry["accuracy"].setdefault(name, []).append(m["threats"][threat])
        record[threat] = entry
    (out).mkdir(parents=True, exist_ok=True)
    _write(out / "eps_sweep.json", json.dumps(record, indent=2) + "\n")
    _write(out / "eps_sweep.md", sweep_table(record) + "\n")
    plot_eps_sweep({t: {"norm": e["norm"], "curves": {
        m: [(0.0, e["clean"][m])] + list(zip(e["eps"], accs)) for m, accs in e["accuracy"].items()
    }} for t, e in record.items()}, out / "eps_sweep.png")
    return record


def sweep_table(record: Mapping[str, Any]) -> str:
    """Markdown: per threat, a row per model, clean then each eps, accuracies in percent."""
    parts = []
    for threat, e in record.items():
        header = ["model", "clean"] + [f"{threat} {eps:g}" for eps in e["eps"]]
        rows = [[m, 100 * e["clean"][m]] + [100 * a for a in accs] for m, accs in e["accuracy"].items()]
        parts.append(markdown_table(header, rows))
    return "\n\n".join(parts)


def _write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())
