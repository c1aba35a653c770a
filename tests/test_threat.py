"""Threat-model geometry: random starts, steepest-ascent steps and exact projections."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mutualat.attacks.threat import L1Threat, make_threat, project_l1_ball
from mutualat.errors import ConfigError

NORMS = {"linf": 8 / 255, "l2": 0.5, "l1": 12.0}


def reference_l1_projection(v: np.ndarray, eps: float) -> np.ndarray:
    """Slow reference: bisection on the soft threshold theta with sum(max(|v|-theta,0)) = eps."""
    a = np.abs(v).astype(np.float64)
    if a.sum() <= eps:
        return v.astype(np.float64)
    lo, hi = 0.0, a.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.maximum(a - mid, 0).sum() > eps:
            lo = mid
        else:
            hi = mid
    return np.sign(v) * np.maximum(a - (lo + hi) / 2, 0)


def test_make_threat_rejects_unknown_norm_and_bad_eps():
    with pytest.raises(ConfigError, match="linf"):
        make_threat("l3", 1.0)
    for bad in (0, -1.0, math.nan, math.inf):
        with pytest.raises(ConfigError, match=str(bad)):
            make_threat("linf", bad)


def test_l1_projection_matches_reference():
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.001, 0.01, 0.05, 0.3, 1.0])[:, None]
    v = torch.randn(5, 3 * 32 * 32, generator=gen, dtype=torch.float64) * scales
    v[1, :100] *= 30  # a few large coordinates: a sparse solution
    for eps in (0.5, 12.0):
        p = project_l1_ball(v, eps)
        for i in range(v.shape[0]):
            ref = reference_l1_projection(v[i].numpy(), eps)
            np.testing.assert_allclose(p[i].numpy(), ref, atol=1e-9)
            assert p[i].abs().sum() <= eps + 1e-9


def test_l1_projection_leaves_points_inside_unchanged():
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(4, 1, 8, 8, generator=gen)
    radii = torch.tensor([1.0, 5.0, 11.0, 12.0]).reshape(-1, 1, 1, 1)
    v = v / v.abs().flatten(1).sum(dim=1).reshape(-1, 1, 1, 1) * radii
    assert torch.equal(project_l1_ball(v[:3], 12.0), v[:3])
    mixed = torch.cat([v[:1], 10 * v[1:2]])  # one inside, one outside
    p = project_l1_ball(mixed, 12.0)
    assert torch.equal(p[0], mixed[0])
    assert p[1].abs().sum().item() == pytest.approx(12.0, rel=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_projection_and_random_init_stay_in_ball_and_box(norm):
    threat = make_threat(norm, NORMS[norm])
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(8, 3, 16, 16, generator=gen)
    x[0] = 0.0
    x[1] = 1.0
    delta = torch.randn(x.shape, generator=gen) * 3
    assert threat.contains(x, x + threat.project(x, delta)).all()
    assert threat.contains(x, threat.finalize(x, delta)).all()
    init = threat.random_init(x, generator=gen)
    assert threat.contains(x, x + init).all()
    assert init[2:].abs().sum() > 0
    inside = threat.project(x, delta) * 0.5
    assert torch.allclose(threat.project(x, inside), inside, atol=1e-7)


def test_l2_projection_is_radial():
    threat = make_threat("l2", 0.5)
    delta = torch.randn(4, 3, 8, 8)
    p = threat.project_ball(delta)
    assert torch.allclose(threat.norm_of(p).float(), torch.full((4,), 0.5), atol=1e-6)
    cos = torch.nn.functional.cosine_similarity(p.flatten(1), delta.flatten(1))
    assert torch.allclose(cos, torch.ones(4), atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_ascent_step_of_zero_gradient_is_zero_not_nan(norm):
    threat = make_threat(norm, NORMS[norm])
    x = torch.rand(2, 3, 8, 8)
    step = threat.ascent_step(torch.zeros_like(x), 0.1, x_adv=x)
    assert torch.equal(step, torch.zeros_like(x))


def test_linf_and_l2_steps():
    grad = torch.randn(3, 3, 8, 8)
    assert torch.equal(make_threat("linf", 0.1).ascent_step(grad, 0.01), 0.01 * grad.sign())
    step = make_threat("l2", 1.0).ascent_step(grad, 0.2)
    assert torch.allclose(step.flatten(1).norm(dim=1), torch.full((3,), 0.2), atol=1e-6)


def test_l1_step_is_sparse_topk_and_skips_saturated_pixels():
    threat = make_threat("l1", 12.0)
    assert isinstance(threat, L1Threat)
    gen = torch.Generator().manual_seed(3)
    x = torch.full((2, 1, 10, 10), 0.5)
    grad = torch.randn(x.shape, generator=gen)
    # The largest positive-gradient coordinate sits at 1.0: moving it would leave [0,1].
    top = grad.flatten(1).argmax(dim=1)
    x.view(2, -1)[torch.arange(2), top] = 1.0
    for _ in range(20):
        step = threat.ascent_step(grad, 0.05, x_adv=x, generator=gen).flatten(1)
        nnz = (step != 0).sum(dim=1)
        assert ((nnz >= 5) & (nnz <= 20)).all()
        k = nnz[0].item()
        assert torch.allclose(step.abs().sum(dim=1), torch.full((2,), 0.05 * 20), atol=1e-5)
        assert (step[step != 0].abs() - 0.05 * 20 / k).abs().max() < 1e-6
        assert (step[torch.arange(2), top] == 0).all()
        moved = step != 0
        assert torch.equal(step[moved].sign(), grad.flatten(1)[moved].sign())
        # The moved coordinates are the k largest |grad| among the free ones.
        free = grad.flatten(1).abs().clone()
        free[torch.arange(2), top] = 0
        kth = free.topk(k, dim=1).values[:, -1:]
        assert (grad.flatten(1).abs()[moved].reshape(2, k) >= kth).all()


# --- Threat: the one description of a threat ---------------------------------------------

def test_a_threat_is_validated_once_when_made_and_config_readers_name_the_key():
    from mutualat.attacks.threat import Threat
    from mutualat.config import load_config
    from mutualat.errors import FieldError

    assert Threat("l2", 0.5, 50, 0.05).record() == {"norm": "l2", "eps": 0.5}
    assert Threat("l1", 10.0, 10).resolved_step_size() == pytest.approx(2.5 * 10 / 10 / 20)
    for bad, field in ((("l3", 0.1), "norm"), (("linf", 0.0), "eps"), (("linf", 2.0), "eps"),
                       (("l2", float("nan")), "eps"), (("l2", 1.0, -1), "steps")):
        with pytest.raises(FieldError) as info:
            Threat(*bad)
        assert info.value.field == field
    # The same check, with the key's path, wherever a config holds a threat.
    with pytest.raises(ConfigError, match=r"^attack\.eps must be a finite number > 0"):
        load_config(None, ["attack.eps=0"])
    cfg = load_config(None, ["method.name=mat-mp", "method.params.threats=[{norm: linf, eps: 0.1}, "
                             "{norm: l2, eps: -1}]"])
    from mutualat.methods import build_method

    with pytest.raises(ConfigError, match=r"^method\.params\.threats\.1\.eps must be a finite"):
        build_method(cfg)


@pytest.mark.parametrize("record, norm, expected", [
    # MAT-MP's files now record every type; the default is the model's own l-inf threat.
    ({"threats": [{"norm": "linf", "eps": 0.03}, {"norm": "l2", "eps": 0.5}]}, None, ("linf", 0.03)),
    ({"threats": [{"norm": "linf", "eps": 0.03}, {"norm": "l2", "eps": 0.5}]}, "l2", ("l2", 0.5)),
    # Older MAT-MP files recorded attack.eps (0.1, never trained on) as their threat: the
    # method's own list wins.
    ({"threat": {"norm": "linf", "eps": 0.1},
      "method": {"name": "mat-mp", "threats": [{"norm": "linf", "eps": 0.03, "steps": 40},
                                               {"norm": "l1", "eps": 12.0, "steps": 50}]}},
     None, ("linf", 0.03)),
    ({"threat": {"norm": "l2", "eps": 1.5}}, None, ("l2", 1.5)),  # a single-threat file
])
def test_transfer_defaults_to_the_threat_a_model_was_trained_on(record, norm, expected):
    from mutualat.cli_eval import transfer_threat

    assert transfer_threat("m", record, norm, None) == expected
    assert transfer_threat("m", record, "linf", 0.2) == ("linf", 0.2)  # given: used as given


def test_transfer_from_a_model_without_a_recorded_threat_needs_eps():
    from mutualat.cli_eval import transfer_threat

    with pytest.raises(ConfigError, match="records no linf training eps; pass --eps"):
        transfer_threat("foreign", {}, None, None)
    with pytest.raises(ConfigError, match=r"trained on l2.*pass --eps"):
        transfer_threat("m", {"threats": [{"norm": "l2", "eps": 1.0}]}, "linf", None)


def test_a_mat_mp_model_file_records_the_threats_it_was_trained_on(tmp_path):
    from mutualat.config import load_config
    from mutualat.models import read_model_meta
    from mutualat.train import Trainer

    from conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(1) + [
        "data.train_subset=64", "eval.test=false", "method.name=mat-mp", "models.1.name=tinycnn",
        "models.2.name=tinycnn", "method.params.threats=[{norm: linf, eps: 0.05, steps: 1}, "
        "{norm: l2, eps: 0.7, steps: 1}]"])
    Trainer(cfg, tmp_path / "run").fit()
    record = read_model_meta(tmp_path / "run" / "models" / "generalist.safetensors")
    assert record["threats"] == [{"norm": "linf", "eps": 0.05}, {"norm": "l2", "eps": 0.7}]
    assert "threat" not in record  # attack.eps (0.1 here) was never a threat of this model
    from mutualat.cli_eval import transfer_threat

    assert transfer_threat("generalist", record, None, None) == ("linf", 0.05)


def test_eval_notes_a_suite_radius_other_than_the_trained_one():
    from mutualat.cli_eval import threat_mismatches
    from mutualat.evaluation import load_suite

    suite = load_suite("quick")  # linf 0.1, l2 1.0
    info = {"a": {"threats": [{"norm": "linf", "eps": 0.1}]},
            "b": {"threats": [{"norm": "linf", "eps": 0.03}, {"norm": "l2", "eps": 1.0}]},
            "foreign": {}}
    lines = threat_mismatches(info, suite)
    assert lines == ["b was trained at linf eps=0.03; the suite's linf threat attacks at eps=0.1 "
                     "(--eps changes it)"]
