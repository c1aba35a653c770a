"""Where a study stands (``mutualat compare PLAN --out DIR --status``): what is finished and
what it cost, what can start now, about how much CPU time that will take, and what each
variant's grid has chosen on the validation split.

The estimate for a task that can start is the median CPU time of the finished tasks of its
**family**: the same kind of the same variant, any seed or grid point (see :func:`family`).
A median, because a record can be low (a sitting killed between two heartbeats loses up to
a minute) or high (a machine that was busier). A task that was interrupted or failed
resumes (a run from its last epoch, an evaluation from its last attack), so the CPU time its
record already holds is taken off. A task still waiting on others gets the same median, by
family: a run whose grid has not chosen yet is still known by its family, whatever setting
the grid will choose. A family with nothing finished is estimated from its **kin**, a
variant's family of the same kind doing the same work (see :func:`_kin`), and says so.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import time

from mutualat.compare import sections
from mutualat.compare.plan import setting_label
from mutualat.compare.records import spec_digest, task_records
from mutualat.compare.selection import choice_notes
from mutualat.compare.study import UNCHOSEN, Study
from mutualat.compare.tasks import Task, judged_alone
from mutualat.compare.worker import HEARTBEAT_S
from mutualat.errors import ConfigError

#: Record statuses of a task that continues where it stopped: its CPU time counts as done.
_RESUMES = ("interrupted", "running", "failed")


def family(key: str) -> str:
    """The tasks whose cost a task's is estimated from: its key without the seed, and a
    training run's also without its grid point. "train/mat/lr0.2/seed10" -> "train/mat";
    "eval/control/seed20" -> "eval/control"; "table/table2/mat/seed0" -> "table/table2/mat";
    "transfer/seed10" -> "transfer"."""
    parts = key.split("/")[:-1]
    return "/".join(parts[:2] if parts[0] == "train" else parts)


def status_lines(study: Study) -> list[str]:
    """The lines ``--status`` prints: one per task that can start, those running now first
    (:func:`_running`), the others in the order ``mutualat compare`` would start them; one per
    family of tasks still waiting on others; one per variant's grid (:func:`grid_lines`);
    then the totals."""
    with study.snapshot():
        return _status_lines(study)


def _status_lines(study: Study) -> list[str]:
    records = task_records(study.out)  # by slug, the task's record file name
    ready, waiting = sections.tasks(study)
    ready = longest_first(ready, waiting, records, study=study)  # as they would start
    done = finished_costs(records, [t.key for t in ready] + waiting)
    now = time.time()
    running = {t.key for t in ready if _running(records.get(t.slug, {}), now)}
    ready = sorted(ready, key=lambda t: t.key not in running)  # then in the order they start
    kin = _kin(study, done, [t.key for t in ready] + waiting)

    def basis(fam: str, them: str) -> tuple[float, str] | None:
        """The median cost ``fam``'s tasks are estimated at, and what it is taken from."""
        found = _like(fam, done, kin)
        if found is None:
            return None
        like, why = found
        said = f"as {like}: {why}" if why else f"the median of {len(done[like])} finished like {them}"
        return statistics.median(done[like]), said

    lines = []
    width = max((len(t.key) for t in ready), default=0)
    ready_total, ready_unknown = 0.0, 0
    for task in ready:
        spent = _spent(records, task)
        estimate = basis(family(task.key), "it")
        if estimate:
            left = max(estimate[0] - spent, 0.0)
            ready_total += left
            note = f"about {_amount(left)} ({estimate[1]})"
        else:
            ready_unknown += 1
            note = "no finished task like it to go by"
        if spent:
            note += f"; {_amount(spent)} already spent"
        lines.append(f"{'running' if task.key in running else 'ready':<8} {task.key:<{width}}  {note}")
    families: dict[str, int] = {}
    for key in waiting:
        families[family(key)] = families.get(family(key), 0) + 1
    width = max((len(f"{n} × {f}") for f, n in families.items()), default=0)
    waiting_total, waiting_unknown = 0.0, 0
    for fam, count in families.items():
        estimate = basis(fam, "them")
        if estimate:
            waiting_total += count * estimate[0]
            note = f"about {_amount(estimate[0])} each ({estimate[1]})"
        else:
            waiting_unknown += count
            note = "no finished task like them to go by"
        lines.append(f"waiting  {f'{count} × {fam}':<{width}}  {note}")
    lines += grid_lines(study)
    finished = [cpu for cpus in done.values() for cpu in cpus]
    lines.append(f"finished {len(finished)} tasks, {_amount(sum(finished))}")
    last = (f"{len(ready)} ready" + (f" ({len(running)} running now)" if running else "")
            + f", {len(waiting)} waiting on them")
    for name, tasks, total, unknown in (("ready", ready, ready_total, ready_unknown),
                                         ("waiting", waiting, waiting_total, waiting_unknown)):
        if tasks and unknown == len(tasks):
            last += f"; the {name} ones: not estimated"
        elif tasks:
            last += f"; the {name} ones: about {_amount(total)}"
            last += f" ({unknown} of them not estimated)" if unknown else ""
    growth = sum(may_grow(study, v) for v in study.plan.variants if study.selection(v) is None)
    if growth:
        last += f"; not counted: up to {growth} grid run{'s' if growth != 1 else ''} extend_grid may add"
    lines.append(last)
    return lines


def _like(fam: str, done: dict[str, list[float]],
          kin: dict[str, tuple[str, str]]) -> tuple[str, str | None] | None:
    """The family whose finished tasks ``fam``'s are estimated from, and why when it is not
    ``fam`` itself (:func:`_kin`); None with nothing finished to go by."""
    return (fam, None) if done.get(fam) else kin.get(fam)


def _kin(study: Study, done: dict[str, list[float]], keys: list[str]) -> dict[str, tuple[str, str]]:
    """For a training or evaluation family with nothing finished (of ``keys``' families), the
    finished family of the same kind it is estimated from instead, and why: the first
    variant's of the plan whose tasks of that kind do the same work.

    A training of the same method on the same networks (architecture and arguments), frozen
    and natural ones alike, with as many attack steps for as many epochs (MAT-MP-AVG from
    MAT-MP-MAX). An evaluation of as many networks alone, of one architecture, and an
    ensemble of as many or none (AT-AVG from AT-MAX, and MAT-MP's generalist, judged alone,
    from AT-MAX too); where the networks are of several architectures, of the same members.
    The suite and test images are the plan's, every variant's: only the cost of the attacks
    that run on what earlier ones left differs with the models' robustness."""
    plan = study.plan

    @functools.cache
    def config(variant: str):  # its first grid point's: what its tasks do, not at what lr
        return plan.config(variant, plan.settings(variant)[0], plan.grid_seed)

    def network(m) -> tuple[str, str]:
        return m.name, json.dumps(m.kwargs, sort_keys=True)

    def members(variant: str) -> tuple:
        """What Study.eval_job evaluates: the trained members, or those select_on names
        unless a figure shows them all; and how many members its ensemble has (0: none, as
        where select_on names any)."""
        trained = tuple(network(m) for m in config(variant).models if not m.frozen)
        alone = judged_alone(plan, variant)
        ensembled = len(trained) if plan.select_on.get(variant) is None and len(trained) > 1 else 0
        return trained, alone, ensembled

    def shape(kind: str, variant: str) -> tuple:
        if kind == "train":  # a frozen teacher takes no step; a natural member no attack
            cfg = config(variant)
            return (cfg.method.name, tuple((network(m), m.frozen) for m in cfg.models),
                    cfg.method.params.get("natural"), cfg.attack.steps, cfg.optim.epochs)
        trained, alone, ensembled = members(variant)
        if len(set(trained)) == 1:  # of one architecture: how many are evaluated is the cost
            first = 1 if plan.eval.members == "first" else len(trained)
            return trained[0], len(alone) if alone is not None else first, ensembled
        return trained, tuple(alone or ()), ensembled

    def why(kind: str, variant: str, like: str) -> str:
        if kind == "train":
            return "the same method and networks"
        same = members(variant)[:2] == members(like)[:2]
        return "the same networks evaluated" if same else "as many networks of one architecture evaluated"

    out = {}
    for fam in {family(k) for k in keys if k.split("/")[0] in ("train", "eval")} - set(done):
        kind, variant = fam.split("/")[:2]
        if variant not in plan.variants:  # the control's members, its ensemble
            continue
        like = next((v for v in plan.variants
                     if f"{kind}/{v}" in done and shape(kind, v) == shape(kind, variant)), None)
        if like:
            out[fam] = (f"{kind}/{like}", why(kind, variant, like))
    return out


def may_grow(study: Study, variant: str) -> int:
    """How many more grid runs the plan's ``extend_grid`` may still add to ``variant``'s grid:
    per key it grows, the values it may still gain times the points of the other keys."""
    grid, declared = study.grid(variant), study.plan.grids[variant]
    return sum((limit - len(grid[key]) + len(declared[key]))
               * math.prod(len(values) for k, values in grid.items() if k != key)
               for key, limit in study.plan.extend_grid.items() if len(declared.get(key, [])) > 1)


def grid_lines(study: Study) -> list[str]:
    """Per variant, the grid point its validation scores chose (with the score and the
    report's notes: the points the plan's ``extend_grid`` added, "at the edge of the grid",
    what the one-SE rule did, a tie for the highest score), or how many of its grid runs have ended with each one's
    validation score (or "diverged"), the points added so far and how many more the grid may
    gain, or the teacher whose choice its grid waits on: what a multi-day study's author checks
    before its other seeds start, in time to widen a grid that does not bracket its best."""
    plan = study.plan
    width = max(len(v) for v in plan.variants)
    lines = []
    for variant in plan.variants:
        chosen = study.selection(variant)
        if chosen is not None:
            notes = choice_notes(chosen.at_edge, chosen.note, chosen.extended)
            notes = f"; {notes}" if notes else ""
            lines.append(f"grid     {variant:<{width}}  chose {chosen.label} (validation "
                         f"{100 * chosen.scores[chosen.label]:.1f} %{notes})")
            continue
        teacher = plan.teachers.get(variant)
        if teacher is not None and study.selection(teacher) is None:
            lines.append(f"grid     {variant:<{width}}  waits on {teacher}'s grid (its teacher)")
            continue
        settings = study.settings(variant)
        ended = [text for text in (_ended(study, variant, s) for s in settings) if text]
        added = [setting_label(s) for s in settings if s not in plan.settings(variant)]
        lines.append(f"grid     {variant:<{width}}  {len(ended)} of {len(settings)} grid runs ended"
                     + (f" (validation: {', '.join(ended)})" if ended else "")
                     + (f"; grid extended by {', '.join(added)}" if added else "")
                     + (f"; may gain up to {more} more" if (more := may_grow(study, variant)) else ""))
    return lines


def _ended(study: Study, variant: str, setting: dict) -> str:
    """A grid run that has ended, as ``--status`` lists it ("lr0.05 52.0 %", "lr0.4 diverged",
    "lr0.1 no validation score" for a run that validated nothing); "" for one still to end."""
    run = study.run_dir(variant, setting, study.plan.grid_seed)
    if not (study.finished(run) or study.diverged(run)):
        return ""
    label = setting_label(setting)
    try:
        score = study.grid_score(variant, run)
    except ConfigError:
        return f"{label} no validation score"
    return f"{label} {'diverged' if score == float('-inf') else f'{100 * score:.1f} %'}"


def finished_costs(records: dict[str, dict], unfinished: list[str],
                   field: str = "cpu_s") -> dict[str, list[float]]:
    """By :func:`family`, the CPU seconds (``field``: or another number of their records, such
    as ``wall_s``) of the finished tasks in ``records``, leaving out those of the
    ``unfinished`` task keys (a task run again after its setting changed)."""
    undone = _undone(records, unfinished)
    done: dict[str, list[float]] = {}
    for slug, record in records.items():
        if record.get("status") == "done" and slug not in undone:
            done.setdefault(_family_of(slug), []).append(record[field])
    return done


def wall_left(study: Study, ready: list[Task], waiting: list[str],
              records: dict[str, dict]) -> dict[str, float | None]:
    """Per ready task key, about how many wall-clock seconds it still takes: its CPU time left
    as ``--status`` estimates it (from its family or its kin), times the median ratio of wall
    to CPU time of the finished tasks it is estimated from (the contention they met); None
    with nothing finished to go by. What ``mutualat compare --until`` starts a task by."""
    keys = [t.key for t in ready] + waiting
    cpu, wall = finished_costs(records, keys), finished_costs(records, keys, "wall_s")
    kin = _kin(study, cpu, keys)
    out: dict[str, float | None] = {}
    for task in ready:
        found = _like(family(task.key), cpu, kin)
        if found is None:
            out[task.key] = None
            continue
        like = found[0]
        ratio = statistics.median(w / c if c > 0 else 1.0 for w, c in zip(wall[like], cpu[like]))
        out[task.key] = max(statistics.median(cpu[like]) - _spent(records, task), 0.0) * max(ratio, 1.0)
    return out


def longest_first(ready: list[Task], waiting: list[str], records: dict[str, dict],
                  teachers: dict[str, str] | None = None, study: Study | None = None) -> list[Task]:
    """``ready`` in the order to start them: by priority (:attr:`Task.priority`: seed by seed,
    then phase); within a priority an interrupted task first, which resumes: what it spent
    counts only once it has finished (an archive keeps finished work alone, and a sitting
    that ends with ``--until`` leaves it behind otherwise); then the longest first, as
    :func:`status_lines` estimates them: from their family's finished tasks or, given the
    ``study``, their kin's (a task with nothing like it finished counts as the longest: it
    may be, and its cost then informs the estimates of its kind at later seeds). A teacher's
    training counts with its longest student's (``teachers``: student variant -> teacher
    variant; the study's plan's when it is given), which can start only after it. On K
    cores the last task to start is then a short one, rather than an hour of one core's work
    while the others idle; ties keep the plan's order."""
    keys = [t.key for t in ready] + waiting
    done = finished_costs(records, keys)
    kin = _kin(study, done, keys) if study is not None else {}
    teachers = study.plan.teachers if study is not None else teachers
    students: dict[tuple[str, str], list[str]] = {}  # (teacher, "seed<S>") -> students' keys
    for key in waiting:
        parts = key.split("/")
        if parts[0] == "train" and parts[1] in (teachers or {}):
            students.setdefault((teachers[parts[1]], parts[-1]), []).append(key)

    def median(key: str) -> float:
        found = _like(family(key), done, kin)
        return statistics.median(done[found[0]]) if found else float("inf")

    spent = {t.key: _spent(records, t) for t in ready}  # each record's digest checked once

    def left(task: Task) -> float:
        own = max(median(task.key) - spent[task.key], 0.0)
        parts = task.key.split("/")
        waits = students.get((parts[1], parts[-1]), []) if parts[0] == "train" else []
        return own + max((median(k) for k in waits), default=0.0)

    return sorted(ready, key=lambda t: (t.priority, spent[t.key] == 0, -left(t)))


def _running(record: dict, now: float) -> bool:
    """Whether a task's record says it is running now: its worker wrote "running" within
    three heartbeats (:data:`HEARTBEAT_S`). A worker killed with its scheduler leaves
    "running" behind, and its task resumes at the next start: then it is only ready."""
    ended = record.get("ended")
    return (record.get("status") == "running" and isinstance(ended, (int, float))
            and 0 <= now - ended < 3 * HEARTBEAT_S)  # (a clock set back: not running)


def _spent(records: dict[str, dict], task: Task) -> float:
    """The CPU seconds a task that resumes has already spent (0 for one not started)."""
    record = records.get(task.slug, {})
    if record.get("spec") not in (None, spec_digest(task.spec)):
        return 0.0  # an earlier version of the task (its plan or suite changed): it starts over
    return record.get("cpu_s", 0.0) if record.get("status") in _RESUMES else 0.0


def _undone(records: dict[str, dict], keys: list[str]) -> set[str]:
    """The record slugs of tasks not finished now: those of ``keys`` and, for a run waiting on
    its grid's choice (its key names no setting), that seed's run of every setting: what it
    cost counts once the grid has chosen."""
    undone = {key.replace("/", "__") for key in keys}
    for key in keys:
        head, unchosen, run = key.partition(f"/{UNCHOSEN}/")
        if unchosen:
            prefix, suffix = head.replace("/", "__") + "__", "__" + run
            undone |= {slug for slug in records if slug.startswith(prefix)
                       and slug.endswith(suffix) and "__" not in slug[len(prefix):-len(suffix)]}
    return undone


def _family_of(slug: str) -> str:
    """:func:`family` of a task known by its slug, where "/" is written "__". A "__" inside a
    grid label turns into a "/" here, harmlessly: a training run's family drops its grid
    point, and no other task's key holds one."""
    return family(slug.replace("__", "/"))


def _amount(seconds: float) -> str:
    """CPU time as people plan it: minutes under an hour, else hours."""
    if seconds < 3600:
        return f"{max(round(seconds / 60), 1) if seconds else 0} CPU-min"
    return f"{seconds / 3600:.1f} CPU-h"
