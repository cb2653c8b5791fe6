"""CE, the AE-loss reconstruction, the ensemble joint loss and the registry."""

from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from cervrt.errors import CervrtError  # noqa: E402
from cervrt.train.losses import (  # noqa: E402
    LOSS_NAMES,
    AELoss,
    CELoss,
    EnsembleLoss,
    build_loss,
    ce_loss,
    grade_distances,
)


def _random_batch(seed: int = 0, n: int = 2, c: int = 5, h: int = 3, w: int = 4):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=gen) * 3
    target = torch.randint(0, c, (n, h, w), generator=gen)
    return logits, target


def _reference_ae(logits, target, lam: float):
    """Pixel-by-pixel loop over the SPEC formula, denominators num_classes - 2."""
    c = logits.shape[1]
    probs = logits.softmax(dim=1)
    total, count = 0.0, 0
    for n, i, j in itertools.product(*(range(s) for s in target.shape)):
        t = int(target[n, i, j])
        p = probs[n, :, i, j]
        loss = -math.log(float(p[t]))
        if t >= 1:
            loss += lam * sum(abs(k - t) / max(1, c - 2) * float(p[k]) for k in range(1, c) if k != t)
        total, count = total + loss, count + 1
    return total / count


def _single_pixel(values):
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def test_ce_loss_is_cross_entropy():
    logits, target = _random_batch()
    assert torch.allclose(ce_loss(logits, target), F.cross_entropy(logits, target))
    assert torch.allclose(CELoss()(logits, target), F.cross_entropy(logits, target))


def test_ae_equals_ce_at_lambda_zero():
    logits, target = _random_batch()
    loss = AELoss()
    assert loss.lam == 0.0
    assert torch.allclose(loss(logits, target), F.cross_entropy(logits, target))


def test_ae_equals_ce_for_background_targets():
    logits, _ = _random_batch()
    target = torch.zeros(2, 3, 4, dtype=torch.long)
    loss = AELoss()
    loss.set_progress(1.0)
    assert torch.allclose(loss(logits, target), F.cross_entropy(logits, target))


@pytest.mark.parametrize(("num_classes", "progress"), [(5, 1.0), (5, 0.2), (3, 1.0), (7, 0.75)])
def test_ae_matches_reference_loop(num_classes, progress):
    logits, target = _random_batch(seed=num_classes, c=num_classes)
    loss = AELoss(num_classes)
    loss.set_progress(progress)
    assert loss(logits, target).item() == pytest.approx(_reference_ae(logits, target, loss.lam), rel=1e-5)


def test_adjacent_grade_costs_less_than_distant_grade():
    # target CIN 1 (class 2); the same extra logit 2 goes to CIN 2 (adjacent) or to CIN 3 (distant)
    target = torch.tensor([[[2]]])
    adjacent, distant = _single_pixel([0, 0, 0, 2, 0]), _single_pixel([0, 0, 0, 0, 2])
    # p_target = s = 1 / (4 + e^2) in both cases, so CE is identical
    assert torch.allclose(F.cross_entropy(adjacent, target), F.cross_entropy(distant, target))
    loss = AELoss()
    loss.set_progress(0.5)  # lambda = 1
    s, e2 = 1 / (4 + math.e**2), math.e**2
    ce = -math.log(s)
    # adjacent: normal 1/3 * s + CIN 2 1/3 * e^2 s + CIN 3 2/3 * s
    assert loss(adjacent, target).item() == pytest.approx(ce + s * (1 + e2 / 3), rel=1e-6)
    # distant:  normal 1/3 * s + CIN 2 1/3 * s + CIN 3 2/3 * e^2 s
    assert loss(distant, target).item() == pytest.approx(ce + s * (2 / 3 + 2 * e2 / 3), rel=1e-6)
    assert loss(adjacent, target) < loss(distant, target)


def test_grade_distances():
    weights = grade_distances(5)
    assert weights[2].tolist() == pytest.approx([0, 1 / 3, 0, 1 / 3, 2 / 3])
    assert weights[1].tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3, 1])
    assert weights[0].tolist() == [0] * 5
    assert grade_distances(2).tolist() == [[0, 0], [0, 0]]


def test_lambda_ramp():
    loss = AELoss()
    ramp = {0.0: 0.0, 0.1: 0.2, 0.25: 0.5, 0.5: 1.0, 0.8: 1.0, 1.0: 1.0}
    for fraction, lam in ramp.items():
        loss.set_progress(fraction)
        assert loss.lam == pytest.approx(lam)
    loss.set_epoch(5, 20)
    assert loss.lam == pytest.approx(0.5)
    loss.set_epoch(0, 20)
    assert loss.lam == 0.0
    with pytest.raises(CervrtError, match=r"0\.\.1"):
        loss.set_progress(1.5)
    with pytest.raises(CervrtError, match="epoch"):
        loss.set_epoch(3, 0)


def test_ae_is_stable_and_gradients_flow():
    logits, target = _random_batch(seed=3)
    logits = (logits * 1e4).requires_grad_()
    loss = AELoss()
    loss.set_progress(1.0)
    value = loss(logits, target)
    value.backward()
    assert torch.isfinite(value)
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_ae_penalty_gradient_pushes_away_from_distant_grade():
    # at lambda 1 the distant class gets a larger gradient than the adjacent one from an equal start
    logits = torch.zeros(1, 5, 1, 1, requires_grad=True)
    loss = AELoss()
    loss.set_progress(1.0)
    loss(logits, torch.tensor([[[2]]])).backward()
    grad = logits.grad.view(-1)
    assert grad[4] > grad[3] > 0 and grad[2] < 0


def test_ensemble_loss_is_seg_plus_weighted_cls():
    seg_logits, target = _random_batch(seed=4)
    cls_logits = torch.randn(2, 4, requires_grad=True)
    labels = torch.tensor([0, 3])
    ae = AELoss()
    joint = EnsembleLoss(ae, cls_weight=0.5)
    joint.set_progress(0.25)
    assert ae.lam == pytest.approx(0.5)
    out = joint(seg_logits, cls_logits, target, labels)
    seg, cls = ae(seg_logits, target), F.cross_entropy(cls_logits, labels)
    assert torch.allclose(out.seg, seg) and torch.allclose(out.cls, cls)
    assert torch.allclose(out.total, seg + 0.5 * cls)
    out.total.backward()
    assert cls_logits.grad is not None
    assert not out.seg.requires_grad and not out.cls.requires_grad


def test_ensemble_loss_with_plain_function_and_bad_shapes():
    seg_logits, target = _random_batch(seed=5)
    joint = EnsembleLoss(ce_loss)
    joint.set_epoch(1, 10)  # ce_loss has no schedule: ignored
    out = joint(seg_logits, torch.zeros(2, 4), target, torch.tensor([1, 2]))
    assert torch.allclose(out.total, out.seg + out.cls)
    with pytest.raises(CervrtError, match=r"shape \(2, 4\)"):
        joint(seg_logits, torch.zeros(2, 5), target, torch.tensor([1, 2]))
    with pytest.raises(CervrtError, match="patch labels"):
        joint(seg_logits, torch.zeros(2, 4), target, torch.tensor([1.0, 2.0]))
    with pytest.raises(CervrtError, match="cls_weight"):
        EnsembleLoss(ce_loss, cls_weight=-1.0)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_build_loss(name):
    loss = build_loss(name, num_classes=3)
    logits, target = _random_batch(c=3)
    loss.set_progress(1.0)
    assert torch.isfinite(loss(logits, target))
    assert LOSS_NAMES == ("ae", "ce")


def test_unknown_loss_name_lists_valid_names():
    with pytest.raises(CervrtError, match="unknown loss 'dice': choose one of ae, ce"):
        build_loss("dice")


def test_bad_logits_and_targets_raise():
    logits, target = _random_batch()
    with pytest.raises(CervrtError, match="do not match"):
        AELoss()(logits, target[:, :2])
    with pytest.raises(CervrtError, match="3 channels but the loss was built for 5"):
        AELoss()(logits[:, :3], target)
    with pytest.raises(CervrtError, match="int64"):
        ce_loss(logits, target.float())
    with pytest.raises(CervrtError, match="num_classes"):
        AELoss(1)
