"""One training loop for every method.

The loop reads top to bottom: the run folder, the data, the method, the cohort of members;
for each epoch, for each batch, the method's loss on the cohort, one step of every trained
member; at each epoch's end validation (clean and PGD on the held-out split), the model files
and an atomic checkpoint; at the end the test split. ``resume`` continues from the checkpoint
exactly as the uninterrupted run would have: the loader's batches depend on (seed, epoch,
step) alone and every RNG state is restored.

Launched by torchrun, the same loop runs in every process (:mod:`mutualat.train.processes`):
the cohort's placement (:mod:`mutualat.train.placement`) shards each batch or holds some of
the members, and only rank 0 writes the run folder. In one process every placement call is
the identity.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from mutualat.attacks.threat import check_within_inputs
from mutualat.config import RunConfig, to_dict
from mutualat.data import DeviceLoader, load_dataset, subset, train_val_split
from mutualat.device import machine_record, resolve_device
from mutualat.errors import ConfigError, DivergedError
from mutualat.methods import build_method, resolve_method_params
from mutualat.models import save_model
from mutualat.train import processes
from mutualat.files import atomic_write_bytes
from mutualat.train.checkpoint import save_checkpoint
from mutualat.train.cohort import Cohort, Member
from mutualat.train.logger import MetricsLog, NullLog
from mutualat.train.members import build_member, model_record, remote_member, trial_step
from mutualat.train.optim import member_learning_rates
from mutualat.train.placement import make_placement
from mutualat.train.precision import choose_precision, device_rule
from mutualat.train.preflight import check_names
from mutualat.train.run_dir import (CHECKPOINT, lock_run_dir, prepare_run_dir, resume_or_restart,
                                    run_id, undo_new_run_dir, what_survives, writing)
from mutualat.train.state import gather_state, restore_state, seed_everything
from mutualat.train.speed import apply_speed_options
from mutualat.train.validate import robust_accuracies

logger = logging.getLogger(__name__)


class Trainer:
    def __init__(self, cfg: RunConfig | None, out_dir: str | Path, resume: bool = False) -> None:
        """``cfg`` may be None with ``resume``: the run folder's saved config is used."""
        self.out = Path(out_dir)
        cfg = resolve_method_params(cfg) if cfg else None
        # Launched by torchrun: join the other processes; rank 0 alone touches the run folder.
        self.processes = processes.setup(cfg, self.out)
        existed = self.out.exists()
        if existed and not self.out.is_dir():
            raise ConfigError(f"--out {self.out} is a file, not a folder; choose another --out")
        held: dict[str, Any] = {}  # rank 0's lock on the run folder, held while this lives
        self.processes.from_main(lambda: held.update(lock=lock_run_dir(self.out)))
        self._lock = held.get("lock")
        self.cfg = self.processes.from_main(lambda: prepare_run_dir(self.out, cfg, resume))
        self.resume = resume
        try:
            self._build(resume)
        except BaseException:
            # A new run whose data, models or method could not be built (an unknown name, a
            # missing file, a bad value) leaves no half-made folder behind, so the corrected
            # command can use the same --out. A resumed run's folder is never touched.
            if not resume and self.processes.is_main:
                undo_new_run_dir(self.out, existed)
            self.release()
            raise

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder (always, in a single process)."""
        return self.processes.is_main

    # --- construction ----------------------------------------------------------------

    def _build(self, resume: bool) -> None:
        cfg, procs = self.cfg, self.processes
        check_names(cfg)  # before any data is read: a typo costs a second, not a download
        procs.configure(cfg)
        self.device = procs.device(resolve_device(cfg.device))
        seed_everything(cfg.seed, cfg.deterministic)
        self._build_data()
        self.method = build_method(cfg)
        # An l2 or l1 ball wider than the input space itself (the shape is known only now).
        for key, norm, eps in self.method.threat_radii():
            check_within_inputs(key, norm, eps, self.dataset.input_shape)
        self.placement = make_placement(cfg.distributed.mode, procs, self.dataset.num_classes,
                                        cfg.distributed.sync_bn)
        self.placement.check(cfg, self.method)
        trained = self._trained_roles()
        unknown = [r for r in cfg.eval.val_roles or [] if r not in trained]
        if unknown:
            raise ConfigError(f"eval.val_roles names {', '.join(map(repr, unknown))}, not a "
                              f"trained member of this run (its roles: {', '.join(trained)})")
        self.run_id = procs.from_main(lambda: run_id(self.out))
        state = procs.scatter_from_main(lambda: resume_or_restart(self.out, self.cfg),
                                        self.placement.checkpoint_part) if resume else None
        # bf16 autocast and channels_last: forced by the config, kept from the checkpoint, or
        # timed on this run's shapes (train/precision.py). Rank 0 decides for every process.
        saved = None
        if state is not None:
            # A checkpoint from before the trial existed was computed by the device rule.
            saved = state.get("precision") or dataclasses.asdict(
                device_rule(cfg.amp, cfg.channels_last, self.device))
        # The trial times this process's share of a batch (a shard in data-parallel runs).
        batch = cfg.data.batch_size // (procs.world if self.placement.mode == "data" else 1)
        self.precision = procs.from_main(lambda: choose_precision(
            cfg.amp, cfg.channels_last, self.device,
            lambda p: trial_step(cfg, self.dataset, self.device, batch, p), saved=saved,
            deterministic=cfg.deterministic))
        self.amp = self.precision.chosen.amp
        self.channels_last = self.precision.chosen.channels_last
        # This process's members; in cohort-parallel runs rank 0 also keeps a CPU copy of the
        # others' members, to write their model files.
        n = len(cfg.models)
        self.cohort = Cohort([build_member(cfg, i, self.dataset, self.method, self.placement,
                                           self.device, self.channels_last, len(self.loader))
                              for i in range(n) if self.placement.owns(i)], n, self.placement)
        self.remote = {i: remote_member(cfg, i, self.dataset, self.method) for i in range(n)
                       if not self.placement.owns(i) and procs.is_main}
        procs.seed(cfg.seed)
        self.log = MetricsLog(self.out) if procs.is_main else NullLog()
        self.epoch = 0  # completed epochs
        self.step_in_epoch = 0  # completed steps of the current epoch
        self.global_step = 0
        self.best: dict[str, float] = {}  # role -> best validation robust accuracy
        # (epoch, step_in_epoch) of the checkpoint in the run folder; None before the first.
        self.checkpointed: tuple[int, int] | None = None
        if state is not None:
            self._restore(state)
        speed = apply_speed_options(self.cfg, self.method, [m.model for m in self.cohort], self.device)
        self.log.write("speed", self.global_step, **speed, **self.precision.record())
        # Where this stretch of the run computes (a resumed run may have moved), every process
        # of it: read back by :func:`mutualat.train.logger.run_machines` for the reports.
        ranks = procs.all_gather({**machine_record(self.device), "host": platform.node()},
                                 "gathering each process's machine record")
        self.log.write("machine", self.global_step, sinks=False, **ranks[0], processes=len(ranks),
                       **({"ranks": ranks} if len(ranks) > 1 else {}))

    def _build_data(self) -> None:
        d, seed = self.cfg.data, self.cfg.seed
        self.dataset = load_dataset(d.name, data_dir=d.data_dir, path=d.path)
        train = self.dataset.train
        if d.val_fraction > 0:
            train, val = train_val_split(train, d.val_fraction, seed=seed)
            self.val = subset(val, d.val_subset, seed=seed)
        else:
            self.val = None  # the final run on the full training set: no model selection
        train = subset(train, d.train_subset, seed=seed)
        self.test = subset(self.dataset.test, d.test_subset, seed=seed)
        augment = d.augment if d.augment is not None else self.dataset.augment
        self.loader = DeviceLoader(train, d.batch_size, device=self.device, shuffle=True,
                                   augment=augment, seed=seed, drop_last=True)
        if len(self.loader) == 0:
            raise ConfigError(
                f"data.batch_size={d.batch_size} is larger than the {len(train.labels)} training images"
            )

    # --- the loop ----------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        try:
            if self.global_step == 0:
                self.log.write("start", 0, config=to_dict(cfg), device=str(self.device),
                               torch=torch.__version__, host=platform.node(),
                               **self.processes.describe(), **self.placement.describe())
            while self.epoch < cfg.optim.epochs:
                self._train_epoch()
                self.epoch += 1
                self.step_in_epoch = 0
                self._end_of_epoch()
            results = self._final_test() if cfg.eval.test else {}
            self.log.close()
            return results
        finally:
            # Finished or failed, the folder is free for the next process (or a --resume in
            # this one): not only once this object is garbage-collected.
            self.release()

    def release(self) -> None:
        """Let go of the run folder's lock (see :func:`lock_run_dir`); idempotent."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.close()

    def _train_epoch(self) -> None:
        from tqdm import tqdm

        cfg = self.cfg
        batches = self.loader.epoch(self.epoch, start_step=self.step_in_epoch)
        bar = tqdm(batches, total=len(self.loader), initial=self.step_in_epoch,
                   disable=not cfg.progress or not self.is_main, leave=False,
                   desc=f"epoch {self.epoch + 1}/{cfg.optim.epochs}", dynamic_ncols=True)
        tick, images = time.perf_counter(), 0
        adv_sum, adv_n = 0.0, 0
        for x, y in bar:
            result = self._step(x, y)
            self.step_in_epoch += 1
            self.global_step += 1
            images += len(y)  # the global batch: data-parallel processes train on shards

            # One host sync per step: needed for the bar anyway, and it catches NaN at once.
            # Several processes: the loss and metrics of the whole batch and cohort, so that
            # every process sees a NaN and they stop together.
            loss, values = self.placement.reduce_step(
                float(result.loss.detach()), {k: float(v) for k, v in result.metrics.items()})
            if not math.isfinite(loss):
                raise DivergedError(
                    f"the {self.method.registered_name} loss became {loss} at epoch "
                    f"{self.epoch + 1}, step {self.step_in_epoch} ({values}); lower the learning "
                    f"rate or check the data; {self._what_survives()}."
                )
            rate = images / max(time.perf_counter() - tick, 1e-9)
            # Accuracy on the training adversarial batches over the epoch so far (the mean over
            # the members whose method reports it).
            adv = [v for k, v in values.items() if k.startswith("adv_acc/") and k.count("/") == 1]
            if adv:
                adv_sum += sum(adv) / len(adv)
                adv_n += 1
            bar.set_postfix({"loss": f"{loss:.3f}", "img_s": f"{rate:.0f}",
                             **({"adv_acc": f"{adv_sum / adv_n:.3f}"} if adv_n else {})},
                            refresh=False)
            rates = member_learning_rates(cfg.models, self.method.roles, {
                m.index: m.optimizer.param_groups[0]["lr"] for m in self.cohort.trained()})
            self.log.write("step", self.global_step, epoch=self.epoch + 1, loss=loss,
                           img_per_s=rate, lr=next(iter(rates.values()), 0.0), **rates, **values)
            if cfg.checkpoint_every and self.step_in_epoch % cfg.checkpoint_every == 0 \
                    and self.step_in_epoch < len(self.loader):
                self._checkpoint()
        bar.close()
        self.last_images_per_s = images / max(time.perf_counter() - tick, 1e-9)

    def _step(self, x: torch.Tensor, y: torch.Tensor):
        """One training step on the batch ``(x, y)``: the method's loss on the cohort, its
        gradient, one optimizer step of every trained member. Returns the method's result."""
        x, y = self.placement.shard(x, y)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.cohort.train_mode()
        self.method.progress = self.global_step / (self.cfg.optim.epochs * len(self.loader))
        with self.precision.chosen.autocast(self.device):
            result = self.method.loss(self.cohort, x, y)
        self.cohort.zero_grad()
        if self.cohort.trained():  # cohort-parallel: a process may hold only frozen members
            with self.processes.guard("the gradient all-reduce"):
                result.loss.backward()
        self.cohort.step(self.cfg.optim.grad_clip)
        self.placement.after_step([m.model for m in self.cohort.trained()])
        return result

    def _end_of_epoch(self) -> None:
        cfg = self.cfg
        record: dict[str, Any] = {"epoch": self.epoch, "img_per_s": self.last_images_per_s}
        improved: set[str] = set()
        metrics: dict[str, dict[str, float]] = {}
        if self.val is not None:
            attacks = self.method.validation_attacks(cfg.eval.pgd_steps, cfg.eval.pgd_step_size)
            x, y = torch.from_numpy(self.val.images), torch.from_numpy(self.val.labels)
            roles = self._validated_roles()
            accuracies = self._evaluate(x, y, attacks, f"validation {self.epoch}", roles)
            record["n_val"] = len(y)  # what a selection's standard error is taken on
            for role in roles:
                acc = accuracies[role]
                # val_pgd is the per-example worst case over the method's threat types (one
                # type for single-perturbation methods); it selects the best checkpoint.
                metrics[role] = {"val_clean": acc["clean"], "val_pgd": acc["worst"]}
                record[f"val_clean/{role}"] = acc["clean"]
                record[f"val_pgd/{role}"] = acc["worst"]
                if len(attacks) > 1:
                    for name in attacks:
                        record[f"val_{name}/{role}"] = metrics[role][f"val_{name}"] = acc[name]
                if acc["worst"] > self.best.get(role, -1.0):
                    self.best[role] = acc["worst"]
                    improved.add(role)
        self._save_models("", metrics=metrics)
        if improved:
            self._save_models(".best", improved, metrics)
        self._checkpoint()
        self.log.write("epoch", self.global_step, **record)
        if self.is_main:
            summary = ", ".join(f"{k} {v:.3f}" for k, v in record.items() if k.startswith("val_"))
            logger.info(f"epoch {self.epoch}/{cfg.optim.epochs}: {self.last_images_per_s:.0f} "
                        f"img/s" + (f"; {summary}" if summary else ""))

    def _trained_roles(self) -> list[str]:
        return [self.method.roles[i] for i, m in enumerate(self.cfg.models) if not m.frozen]

    def _validated_roles(self) -> list[str]:
        """The trained members validated each epoch (``eval.val_roles``; default all)."""
        wanted = self.cfg.eval.val_roles
        return [r for r in self._trained_roles() if wanted is None or r in wanted]

    def _evaluate(self, images: torch.Tensor, labels: torch.Tensor, attacks: dict[str, Any],
                  desc: str = "", roles: list[str] | None = None) -> dict[str, dict[str, float]]:
        """role -> :func:`robust_accuracies` of every trained member (of ``roles``, when
        given), on every process (data-parallel: each process evaluates its slice of the
        images; cohort-parallel: its members), always in fp32."""
        lo, hi = self.placement.eval_range(len(labels))
        bar = self.cfg.progress and self.is_main
        local = {m.role: robust_accuracies(m.model, images[lo:hi], labels[lo:hi], attacks,
                                           progress=f"{desc} {m.role}" if bar else None)
                 for m in self.cohort.trained() if roles is None or m.role in roles}
        return self.placement.combine_accuracies(local, hi - lo)

    def _final_test(self) -> dict[str, Any]:
        """Clean and PGD accuracy of the last models on the test split (never used to select)."""
        cfg = self.cfg
        attacks = self.method.validation_attacks(cfg.eval.test_pgd_steps, cfg.eval.pgd_step_size)
        x, y = torch.from_numpy(self.test.images), torch.from_numpy(self.test.labels)
        threats = ", ".join(f"{a.norm} eps={a.eps:g}" for a in attacks.values())
        results: dict[str, Any] = {
            "method": self.method.registered_name,
            "test_images": len(y),
            "attack": f"PGD-{cfg.eval.test_pgd_steps} {threats}",
            "models": {},
        }
        accuracies = self._evaluate(x, y, attacks, "test")
        for role in self._trained_roles():
            acc = accuracies[role]
            entry = {"clean": acc["clean"], "pgd": acc["worst"]}
            if len(attacks) > 1:  # per type; "pgd" is then the per-example worst over types
                entry.update({f"pgd_{name}": acc[name] for name in attacks})
            results["models"][role] = entry
        if self.is_main:
            with self._writing("results.json"):
                atomic_write_bytes(self.out / "results.json", json.dumps(results, indent=2).encode())
        self.log.write("test", self.global_step, **{
            f"{k}/{role}": v for role, r in results["models"].items() for k, v in r.items()
        })
        return results

    # --- the run folder: checkpoints and model files -------------------------------------

    def _restore(self, state: dict[str, Any]) -> None:
        restore_state(state, self.cohort, self.processes, self.cfg.seed)
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.best = dict(state["best"])
        self.checkpointed = (self.epoch, self.step_in_epoch)
        self.log.truncate_after(self.global_step)

    def _checkpoint(self) -> None:
        state = gather_state(self.cohort, self.processes, self.placement, {
            "config": to_dict(self.cfg), "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step, "best": dict(self.best),
            "precision": self.precision.state(), "run_id": self.run_id,
        })
        if state is not None:
            with self._writing(CHECKPOINT):
                save_checkpoint(self.out / CHECKPOINT, state)
        self.checkpointed = (self.epoch, self.step_in_epoch)

    def _writing(self, name: str) -> contextlib.AbstractContextManager:
        return writing(self.out, name, self.checkpointed)

    def _what_survives(self) -> str:
        return what_survives(self.out, self.checkpointed)

    def _to_save(self, role_filter: set[str] | None) -> list[Member]:
        """The trained members whose model files rank 0 writes now (none on other processes);
        in cohort-parallel runs the other processes' weights are gathered into rank 0's copies."""
        chosen = [m for m in self.cohort.trained() if role_filter is None or m.role in role_filter]
        if self.placement.members_on_main():
            return chosen if self.is_main else []
        parts = self.processes.gather_to_main({m.index: m.model.state_dict() for m in chosen})
        if parts is None:
            return []
        for part in parts[1:]:
            for index, weights in part.items():
                self.remote[index].model.load_state_dict(weights)
                chosen.append(self.remote[index])
        return sorted(chosen, key=lambda m: m.index)

    def _save_models(self, suffix: str, role_filter: set[str] | None = None,
                     metrics: dict[str, Any] | None = None) -> None:
        for member in self._to_save(role_filter):
            meta = model_record(member, self.cfg, self.method, self.dataset.classes, self.epoch)
            if metrics:
                meta["metrics"] = metrics.get(member.role, {})
            name = f"models/{member.role}{suffix}.safetensors"
            with self._writing(name):
                save_model(member.model, self.out / name, meta)

