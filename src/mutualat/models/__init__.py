"""Models: build by name, count FLOPs, save and load self-describing model files.

Every model maps [0,1] images ``(B, C, H, W)`` to logits ``(B, K)``; its first layer
``model.normalize`` does the per-channel normalization. Importing this package registers
every architecture in :data:`MODELS`; a new one is one new file here plus its import below.
"""

# The family modules register their architectures in MODELS when imported.
from mutualat.models import preact_resnet, resnet, small_cnn, wide_resnet  # noqa: F401
from mutualat.models.ensemble import Ensemble, load_cohort, load_ensemble
from mutualat.models.factory import MODELS, create_model, model_options
from mutualat.models.flops import count_flops
from mutualat.models.io import load_model, load_weights_into, read_model_meta, save_model
from mutualat.models.layers import Normalize

__all__ = [
    "MODELS",
    "Ensemble",
    "load_cohort",
    "load_ensemble",
    "Normalize",
    "count_flops",
    "create_model",
    "load_model",
    "load_weights_into",
    "model_options",
    "read_model_meta",
    "save_model",
]
