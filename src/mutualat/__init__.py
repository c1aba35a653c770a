"""mutualat: Mutual Adversarial Training (Liu et al., BMVC 2021) and its baselines in PyTorch."""

__version__ = "0.1.0"

from mutualat.models import (  # noqa: E402
    create_model,
    load_cohort,
    load_ensemble,
    load_model,
    save_model,
)

__all__ = [
    "__version__", "create_model", "load_cohort", "load_ensemble", "load_model", "save_model",
]
