"""Loss family (train/losses.py) and the class-aware sampler (train/samplers.py): checked against torch's own losses
and against straightforward re-implementations of the formulas in METHODS.md §4 and the DAB paper."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlic_edge.errors import MlicError
from mlic_edge.train.losses import LOSSES, DABLoss, create_loss, loss_options
from mlic_edge.train.samplers import ClassAwareSampler

COUNTS = np.array([40, 12, 5, 2])  # images holding each class
NUM_IMAGES = 50


def _random(n=6, c=4, seed=0, unknown=False):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen, dtype=torch.float64) * 2
    targets = (torch.rand(n, c, generator=gen) < 0.4).double()
    if unknown:
        targets[torch.rand(n, c, generator=gen) < 0.25] = -1
    return logits, targets


def _make(name, **options):
    return create_loss(name, class_counts=COUNTS[:4], num_images=NUM_IMAGES, **options)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


# ------------------------------------------------------------------------------------------------------------ basics
def test_bce_default_and_statistics_ignored():
    logits, targets = _random()
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(create_loss("bce")(logits, targets), expected.float(), atol=1e-6)
    assert torch.allclose(create_loss("bce", class_counts=COUNTS, num_images=NUM_IMAGES)(logits, targets),
                          expected.float(), atol=1e-6)
    assert loss_options("bce") == {}


def test_softmargin_equals_torch():
    logits, targets = _random(seed=1)
    expected = torch.nn.MultiLabelSoftMarginLoss()(logits, targets).float()
    assert torch.allclose(create_loss("softmargin")(logits, targets), expected, atol=1e-6)


def test_focal_formula():
    logits, targets = _random(seed=2)
    got = create_loss("focal", gamma=2.0, alpha=0.25, reduction="sum")(logits, targets)
    total = 0.0
    for z, y in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        pt = _sig(z) if y == 1 else 1 - _sig(z)
        total += -(0.25 if y == 1 else 0.75) * (1 - pt) ** 2 * math.log(pt)
    assert got.item() == pytest.approx(total, rel=1e-5)


# --------------------------------------------------------------------------------------------------------------- ASL
def test_asl_gamma0_clip0_is_bce_sum():
    logits, targets = _random(seed=3)
    got = create_loss("asl", gamma_neg=0, gamma_pos=0, clip=0)(logits, targets)
    expected = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum").float()
    assert torch.allclose(got, expected, rtol=1e-5)


def _asl_hand(logits, targets, gn=4.0, gp=1.0, m=0.05, eps=1e-8):
    total = 0.0
    for z, y in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = _sig(z)
        pm = max(p - m, 0.0)
        if y == 1:
            total += -((1 - p) ** gp) * math.log(max(p, eps))
        else:
            total += -(pm ** gn) * math.log(max(1 - pm, eps))
    return total


def test_asl_default_matches_hand_formula():
    logits, targets = _random(n=8, seed=4)
    loss = create_loss("asl")
    assert loss_options("asl") == {"gamma_neg": 4.0, "gamma_pos": 1.0, "clip": 0.05, "eps": 1e-8,
                                   "disable_grad_focal": True, "reduction": "sum"}
    assert loss(logits, targets).item() == pytest.approx(_asl_hand(logits, targets), rel=1e-5)
    mean = create_loss("asl", reduction="mean")(logits, targets).item()
    assert mean == pytest.approx(_asl_hand(logits, targets) / logits.numel(), rel=1e-5)


def test_asl_detach_flag_gradients():
    logits, targets = _random(n=5, seed=5)
    y = targets.float()

    def manual(z, detach):
        p = torch.sigmoid(z)
        p_neg = (1 - p + 0.05).clamp(max=1)
        log_term = y * torch.log(p.clamp(min=1e-8)) + (1 - y) * torch.log(p_neg.clamp(min=1e-8))
        weight = y * (1 - p) ** 1 + (1 - y) * (1 - p_neg) ** 4
        if detach:
            weight = weight.detach()
        return -(log_term * weight).sum()

    for detach in (True, False):
        z1 = logits.float().clone().requires_grad_(True)
        create_loss("asl", disable_grad_focal=detach)(z1, targets).backward()
        z2 = logits.float().clone().requires_grad_(True)
        manual(z2, detach).backward()
        assert torch.allclose(z1.grad, z2.grad, atol=1e-6), detach
    z_a = logits.float().clone().requires_grad_(True)
    create_loss("asl", disable_grad_focal=True)(z_a, targets).backward()
    z_b = logits.float().clone().requires_grad_(True)
    create_loss("asl", disable_grad_focal=False)(z_b, targets).backward()
    assert not torch.allclose(z_a.grad, z_b.grad)


# --------------------------------------------------------------------------------------------------------------- DBL
def _dbl_reference(logits, targets, counts, num_images, alpha=0.1, beta=10.0, mu=0.3, kappa=0.05, lam=5.0,
                   focal=True, gamma=2.0, balance=2.0, ntr=True):
    """Elementwise float64 re-implementation of METHODS.md §4 (DBL, code as the reference)."""
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    n_img, n_cls = z.shape
    total, known = 0.0, 0
    for i in range(n_img):
        repeat = sum(1.0 / counts[j] for j in range(n_cls) if t[i, j] == 1)
        for k in range(n_cls):
            if t[i, k] < 0:
                continue
            known += 1
            r = (1.0 / counts[k]) / repeat if repeat > 0 else math.inf  # no positive: r = +inf as in the code
            w = alpha + (1.0 if r == math.inf else 1.0 / (1.0 + math.exp(-beta * (r - mu))))
            zk = z[i, k]
            if ntr:
                zk += kappa * (-math.log(num_images / counts[k] - 1.0)) / lam
            if t[i, k] == 1:
                ce = -math.log(_sig(zk))
            else:
                if ntr:
                    zk, w = lam * zk, w / lam
                ce = -math.log(1.0 - _sig(zk))
            term = w * ce
            if focal:
                pt = math.exp(-ce)
                term *= balance * (1.0 - pt) ** gamma
            total += term
    return total / known


def test_dbl_matches_reference_formula():
    counts = np.array([30.0, 9.0, 4.0, 2.0])
    logits = np.array([[1.2, -0.4, 0.3, -2.0],
                       [-0.7, 0.9, -1.5, 0.2],
                       [0.1, -0.3, 2.2, -0.9]])
    targets = np.array([[1, 0, 1, 0],
                        [1, 1, 0, 0],
                        [0, 0, 1, 1]], dtype=np.float64)
    loss = create_loss("dbl", class_counts=counts, num_images=60)
    assert loss(torch.tensor(logits), torch.tensor(targets)).item() == pytest.approx(
        _dbl_reference(logits, targets, counts, 60), rel=1e-5)
    for options in ({"focal": False}, {"ntr": False}, {"focal": False, "ntr": False},
                    {"map_gamma": 0.2, "neg_scale": 2.0}):
        loss = create_loss("dbl", class_counts=counts, num_images=60, **options)
        ref_kwargs = {"focal": options.get("focal", True), "ntr": options.get("ntr", True),
                      "mu": options.get("map_gamma", 0.3), "lam": options.get("neg_scale", 5.0)}
        assert loss(torch.tensor(logits), torch.tensor(targets)).item() == pytest.approx(
            _dbl_reference(logits, targets, counts, 60, **ref_kwargs), rel=1e-5), options
    # unknown entries are skipped, and do not count among an image's positives
    targets_u = targets.copy()
    targets_u[0, 1] = -1
    targets_u[2, 3] = -1
    loss = create_loss("dbl", class_counts=counts, num_images=60)
    assert loss(torch.tensor(logits), torch.tensor(targets_u)).item() == pytest.approx(
        _dbl_reference(logits, targets_u, counts, 60), rel=1e-5)


def test_dbl_defaults():
    assert loss_options("dbl") == {"map_alpha": 0.1, "map_beta": 10.0, "map_gamma": 0.3, "init_bias": 0.05,
                                   "neg_scale": 5.0, "focal": True, "gamma": 2.0, "balance_param": 2.0, "ntr": True,
                                   "reduction": "mean"}


# --------------------------------------------------------------------------------------------------------------- DAB
def test_dab_resampled_only_is_dbl_rebalanced_bce():
    logits, targets = _random(n=7, seed=6)
    dab = _make("dab", phi=0.0, gamma_pos=0, gamma_neg=0, soft_scale=1.0, beta=0.1, mu=10.0, epsilon=0.3)
    expected = _dbl_reference(logits.numpy(), targets.numpy(), COUNTS.astype(float), NUM_IMAGES, focal=False,
                              ntr=False)
    assert dab(logits, targets).item() == pytest.approx(expected, rel=1e-5)
    dbl = _make("dbl", focal=False, ntr=False)
    assert dab(logits, targets).item() == pytest.approx(dbl(logits, targets).item(), rel=1e-5)
    # the schedule's last point is the same as phi = 0
    scheduled = _make("dab", gamma_pos=0, gamma_neg=0, mu=10.0)
    scheduled.set_epoch(10, 10)
    assert scheduled(logits, targets).item() == pytest.approx(expected, rel=1e-5)


def test_dab_without_reweighting_is_asl_clip0():
    logits, targets = _random(n=7, seed=7)
    for gp, gn in ((0.0, 4.0), (1.0, 4.0), (2.0, 1.5)):
        dab = _make("dab", phi=1.0, gamma_pos=gp, gamma_neg=gn, soft_scale=1.0, reduction="sum")
        asl = create_loss("asl", gamma_pos=gp, gamma_neg=gn, clip=0.0)
        assert dab(logits, targets).item() == pytest.approx(asl(logits, targets).item(), rel=1e-5)
        # gradients too, with the same detach flag
        for detach in (True, False):
            z1 = logits.float().clone().requires_grad_(True)
            _make("dab", phi=1.0, gamma_pos=gp, gamma_neg=gn, reduction="sum", disable_grad_focal=detach)(
                z1, targets).backward()
            z2 = logits.float().clone().requires_grad_(True)
            create_loss("asl", gamma_pos=gp, gamma_neg=gn, clip=0.0, disable_grad_focal=detach)(z2, targets).backward()
            assert torch.allclose(z1.grad, z2.grad, atol=1e-5)


def test_dab_bce_only_is_bce():
    logits, targets = _random(n=7, seed=8, unknown=True)
    dab = _make("dab", phi=1.0, gamma_pos=0, gamma_neg=0)
    assert dab(logits, targets).item() == pytest.approx(create_loss("bce")(logits, targets).item(), rel=1e-5)
    unscheduled = _make("dab", gamma_pos=0, gamma_neg=0)  # before any set_epoch, φ = 1
    assert unscheduled(logits, targets).item() == pytest.approx(create_loss("bce")(logits, targets).item(), rel=1e-5)


def test_dab_phi_schedule_and_mix():
    dab = _make("dab")
    total = 10
    for epoch, expected in ((0, 1.0), (total // 2, 0.75), (total, 0.0)):
        dab.set_epoch(epoch, total)
        assert dab.phi == pytest.approx(expected)
    assert DABLoss.phi_schedule(3, 12) == pytest.approx(1 - (3 / 12) ** 2)
    # φ multiplies plain BCE, (1 − φ) the resampled BCE (eq. 10)
    logits, targets = _random(n=5, seed=9)
    opts = {"gamma_pos": 0, "gamma_neg": 0}
    plain = _make("dab", phi=1.0, **opts)(logits, targets).item()
    resampled = _make("dab", phi=0.0, **opts)(logits, targets).item()
    dab = _make("dab", **opts)
    dab.set_epoch(5, 10)
    assert dab(logits, targets).item() == pytest.approx(0.75 * plain + 0.25 * resampled, rel=1e-5)


def test_dab_full_formula_with_soft_scale():
    logits, targets = _random(n=5, seed=10)
    m, gp, gn, phi = 2.0, 0.5, 3.0, 0.4
    dab = _make("dab", soft_scale=m, gamma_pos=gp, gamma_neg=gn, phi=phi, reduction="sum")
    z, t = logits.numpy(), targets.numpy()
    total = 0.0
    for i in range(z.shape[0]):
        repeat = sum(1.0 / COUNTS[j] for j in range(z.shape[1]) if t[i, j] == 1)
        for k in range(z.shape[1]):
            r = (1.0 / COUNTS[k]) / repeat if repeat > 0 else math.inf
            s_hat = 0.1 + (1.0 if r == math.inf else _sig(5.0 * (r - 0.3)))
            p_hat = _sig(m * z[i, k])
            if t[i, k] == 1:
                term = (1 - p_hat) ** gp * math.log(_sig(z[i, k]))
            else:
                term = p_hat ** gn * math.log(1 - p_hat)
            total += -((1 - phi) * s_hat + phi) * term
    assert dab(logits, targets).item() == pytest.approx(total, rel=1e-5)


# ------------------------------------------------------------------------------------------------- shared behaviour
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_unknown_entries_are_ignored(name):
    logits, targets = _random(n=6, seed=11, unknown=True)
    assert (targets < 0).any()
    loss = _make(name)
    if name == "dab":
        loss.set_epoch(3, 10)
    base = loss(logits, targets)
    changed = logits.clone()
    changed[targets < 0] = torch.randn(int((targets < 0).sum()), dtype=changed.dtype) * 50
    assert torch.allclose(loss(changed, targets), base, rtol=1e-6, atol=1e-7)
    z = changed.float().clone().requires_grad_(True)
    loss(z, targets).backward()
    assert torch.isfinite(z.grad).all()
    assert (z.grad[targets < 0] == 0).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_finite_and_differentiable(name):
    logits, targets = _random(n=4, seed=12)
    z = (logits * 10).float().requires_grad_(True)  # saturated logits
    value = _make(name)(z, targets)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value) and torch.isfinite(z.grad).all()


def test_loss_options_lists_hyperparameters_only():
    for name in LOSSES:
        options = loss_options(name)
        assert "class_counts" not in options and "num_images" not in options
        _make(name, **options)  # the defaults are valid options
    assert loss_options("dab")["soft_scale"] == 1.0


@pytest.mark.parametrize("name, options", [
    ("asl", {"gamma_neg": -1}),
    ("asl", {"clip": 1.0}),
    ("asl", {"clip": -0.1}),
    ("asl", {"reduction": "max"}),
    ("asl", {"gamma_pos": "two"}),
    ("asl", {"disable_grad_focal": 1}),
    ("focal", {"alpha": 1.5}),
    ("focal", {"gamma": float("nan")}),
    ("dbl", {"neg_scale": 0}),
    ("dab", {"phi": 1.5}),
    ("dab", {"soft_scale": 0}),
    ("asl", {"gama_neg": 4}),
    ("bce", {"gamma": 2}),
])
def test_bad_options(name, options):
    with pytest.raises(MlicError) as err:
        _make(name, **options)
    assert err.value.hint and "\n" not in str(err.value)


def test_unknown_name_and_missing_statistics():
    with pytest.raises(MlicError, match="unknown loss") as err:
        create_loss("hinge")
    assert "asl" in err.value.hint and "dab" in err.value.hint
    with pytest.raises(MlicError):
        loss_options("hinge")
    for name in ("dbl", "dab"):
        with pytest.raises(MlicError, match="class counts") as err:
            create_loss(name)
        assert "class_counts" in err.value.hint
    with pytest.raises(MlicError, match="number of training images"):
        create_loss("dbl", class_counts=COUNTS)
    create_loss("dbl", class_counts=COUNTS, ntr=False)  # no NTR, no need for num_images
    with pytest.raises(MlicError, match="classes"):
        _make("dab")(torch.zeros(2, 5), torch.zeros(2, 5))


# ----------------------------------------------------------------------------------------------------------- sampler
def _long_tail_targets(seed=0):
    rng = np.random.default_rng(seed)
    probs = np.array([0.6, 0.3, 0.1, 0.04, 0.01])
    targets = (rng.random((2000, 5)) < probs).astype(np.int64)
    targets[rng.random(targets.shape) < 0.02] = -1
    targets[:, -1] = np.where(np.arange(2000) < 8, 1, 0)  # a tail class with 8 images
    return targets


def test_class_aware_sampler_balances_classes():
    targets = _long_tail_targets()
    sampler = ClassAwareSampler(targets, num_samples_cls=3, seed=0)
    counts = (targets == 1).sum(axis=0)
    assert len(sampler) == max(1, round(counts.max() * targets.shape[1] / 4))
    drawn = np.concatenate([list(sampler) for _ in range(3)])
    assert len(drawn) == 3 * len(sampler)
    # the class each draw was made for cannot be seen from outside; a draw for class k always holds k, so the share of
    # draws holding a tail class approaches 1/C (plus co-occurrence), far above its share of the data
    share = (targets[drawn] == 1).mean(axis=0)
    data_share = (targets == 1).mean(axis=0)
    assert share[-1] > 0.15 and data_share[-1] < 0.01
    assert share[-2] > 0.15
    assert share.min() > 0.5 * (1 / targets.shape[1])
    # the tail class's 8 images are all used (per-class cycle)
    assert set(drawn[np.isin(drawn, np.arange(8))]) == set(range(8))


def test_class_aware_sampler_deterministic_and_skips_empty():
    targets = _long_tail_targets()
    targets[:, 2] = 0  # a class with no positive image
    a = ClassAwareSampler(targets, seed=3)
    b = ClassAwareSampler(targets, seed=3)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b
    assert list(a) == list(b)  # second epoch, same again
    assert list(a) != first_a or len(first_a) < 10  # but epochs differ
    assert list(ClassAwareSampler(targets, seed=4)) != first_a
    a.set_epoch(0)
    assert list(a) == first_a
    tiny = ClassAwareSampler(np.array([[1, 0], [0, 0]]), num_samples_cls=3)
    assert len(tiny) == 1 and list(tiny) == [0]
    with pytest.raises(MlicError):
        ClassAwareSampler(np.zeros((4, 3)))
    with pytest.raises(MlicError):
        ClassAwareSampler(targets, num_samples_cls=0)


def test_class_aware_sampler_in_dataloader():
    from torch.utils.data import DataLoader, TensorDataset

    targets = _long_tail_targets()
    dataset = TensorDataset(torch.arange(len(targets)))
    loader = DataLoader(dataset, batch_size=32, sampler=ClassAwareSampler(targets, seed=0))
    seen = torch.cat([batch[0] for batch in loader])
    assert len(seen) == len(loader.sampler)
