"""Fair comparisons of training methods: ``mutualat compare PLAN.yaml --out DIR``.

Per variant, a hyperparameter grid trained with one seed on the training split minus the
held-out validation split; the grid point with the best validation robust accuracy (never a
test number); that setting trained for every seed; every model (and each cohort's ensemble,
and a compute-matched ensemble of independently trained models) evaluated on the same
class-balanced test images with a suite that includes AutoAttack; mean ± std over seeds and
paired differences to a baseline with 95% intervals; and, where the plan asks, more suites,
a transfer matrix and figures on the same chosen models (:mod:`mutualat.compare.sections`).
See :mod:`mutualat.compare.plan_file` for the plan file and :mod:`mutualat.compare.study`
for the folder layout.
"""

from mutualat.compare.plan import Plan, setting_label
from mutualat.compare.plan_file import load_plan
from mutualat.compare.runner import StudyError, run_study
from mutualat.compare.selection import Selection, validation_score
from mutualat.compare.study import Study

__all__ = ["Plan", "Selection", "Study", "StudyError", "load_plan", "run_study", "setting_label",
           "validation_score"]
