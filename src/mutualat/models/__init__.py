"""Models: build by name, count FLOPs, save and load self-describing model files.

Every model maps [0,1] images ``(B, C, H, W)`` to logits ``(B, K)``; its first layer
``model.normalize`` does the per-channel normalization. Importing this package registers
every architecture in :data:`MODELS` and every model source kind in :data:`SOURCES`
(``torch:``, ``robustbench:``, ``py:``; see :mod:`.sources`); a new one is one new file here
plus its import below.
"""

# The family modules register their architectures in MODELS when imported.
from mutualat.models import preact_resnet, resnet, small_cnn, wide_resnet  # noqa: F401
# The source modules register their kinds in SOURCES when imported.
from mutualat.models import py_source, robustbench_source, torch_source  # noqa: F401
from mutualat.models.ensemble import Ensemble, load_cohort, load_ensemble
from mutualat.models.factory import MODELS, create_model, model_options
from mutualat.models.flops import count_flops
from mutualat.models.io import save_model
from mutualat.models.layers import Normalize, Preprocessed
from mutualat.models.layouts import LAYOUTS
from mutualat.models.sources import (
    SOURCES,
    LoadedModel,
    ModelSource,
    check_source,
    load_model,
    load_weights_into,
    open_model,
    parse_source,
    read_model_meta,
)

__all__ = [
    "LAYOUTS",
    "MODELS",
    "SOURCES",
    "Ensemble",
    "LoadedModel",
    "ModelSource",
    "Normalize",
    "Preprocessed",
    "check_source",
    "count_flops",
    "create_model",
    "load_cohort",
    "load_ensemble",
    "load_model",
    "load_weights_into",
    "model_options",
    "open_model",
    "parse_source",
    "read_model_meta",
    "save_model",
]
