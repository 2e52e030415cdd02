"""softmax_cross_entropy: value, gradient (finite differences), stability, masking and errors."""

import array_api_compat
import numpy as np
import pytest

import xseq
from xseq.nn.losses import softmax_cross_entropy


def reference_loss(logits, targets, mask):
    """Plain NumPy float64 cross-entropy, written independently of the implementation."""
    V, m, T = logits.shape
    total, n = 0.0, 0
    for i in range(m):
        for t in range(T):
            if mask[i, t]:
                z = logits[:, i, t].astype(np.float64)
                log_softmax = z - z.max() - np.log(np.exp(z - z.max()).sum())
                total -= log_softmax[targets[i, t]]
                n += 1
    return total / n


def make_batch(rng, V=5, m=3, T=4):
    logits = rng.standard_normal((V, m, T))
    targets = rng.integers(0, V, size=(m, T))
    mask = np.ones((m, T), dtype=bool)
    mask[1, 2:] = False
    mask[2, 3:] = False
    targets[~mask] = -1  # padding may hold anything
    return logits, targets, mask


def on(xp, logits, targets, mask, dtype="float64"):
    return (
        xseq.asarray(logits, backend=xp, dtype=dtype),
        xp.asarray(targets),
        None if mask is None else xp.asarray(mask),
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_value_and_gradient_shape(xp, dtype):
    logits, targets, mask = make_batch(np.random.default_rng(0))
    loss, dlogits = softmax_cross_entropy(*on(xp, logits, targets, mask, dtype))
    assert isinstance(loss, float)
    assert loss == pytest.approx(reference_loss(logits, targets, mask), rel=1e-5 if dtype == "float32" else 1e-12)
    assert array_api_compat.array_namespace(dlogits) is xp
    assert tuple(dlogits.shape) == logits.shape and dlogits.dtype == getattr(xp, dtype)


def test_gradient_formula(xp):
    logits, targets, mask = make_batch(np.random.default_rng(1))
    _, dlogits = softmax_cross_entropy(*on(xp, logits, targets, mask))
    d = xseq.to_numpy(dlogits)
    p = np.exp(logits - logits.max(axis=0)) / np.exp(logits - logits.max(axis=0)).sum(axis=0)
    onehot = np.zeros_like(logits)
    for i, t in zip(*np.nonzero(mask)):
        onehot[targets[i, t], i, t] = 1
    expected = (p - onehot) / mask.sum() * mask
    np.testing.assert_allclose(d, expected, rtol=1e-12, atol=1e-15)
    assert np.all(d[:, ~mask] == 0)


def test_gradient_matches_central_finite_differences(xp):
    rng = np.random.default_rng(2)
    logits, targets, mask = make_batch(rng)
    _, dlogits = softmax_cross_entropy(*on(xp, logits, targets, mask))
    analytic = xseq.to_numpy(dlogits)
    numeric = np.zeros_like(logits)
    h = 1e-5
    for index in np.ndindex(*logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[index] += h
        minus[index] -= h
        lp, _ = softmax_cross_entropy(*on(xp, plus, targets, mask))
        lm, _ = softmax_cross_entropy(*on(xp, minus, targets, mask))
        numeric[index] = (lp - lm) / (2 * h)
    rel = np.linalg.norm(analytic - numeric) / (np.linalg.norm(analytic) + np.linalg.norm(numeric))
    assert rel < 1e-6


def test_no_mask_means_every_position(xp):
    logits, targets, _ = make_batch(np.random.default_rng(3))
    targets = np.abs(targets)
    full = np.ones(targets.shape, dtype=bool)
    a = softmax_cross_entropy(*on(xp, logits, targets, None))
    b = softmax_cross_entropy(*on(xp, logits, targets, full))
    assert a[0] == b[0]
    np.testing.assert_array_equal(xseq.to_numpy(a[1]), xseq.to_numpy(b[1]))


def test_huge_logits_are_stable(xp):
    # float32 exp overflows past ~88; log-sum-exp must keep everything finite.
    V, m, T = 4, 2, 3
    logits = np.zeros((V, m, T), dtype=np.float32)
    targets = np.zeros((m, T), dtype=np.int64)
    logits[0] = 1e4  # right class hugely favoured: loss 0
    logits[1, 1, :] = 2e4  # wrong class hugely favoured for example 1: loss 1e4 per position
    loss, dlogits = softmax_cross_entropy(*on(xp, logits, targets, None, "float32"))
    d = xseq.to_numpy(dlogits)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert loss == pytest.approx(1e4 * 3 / 6, rel=1e-6)
    np.testing.assert_allclose(d[:, 1, 0], np.array([-1, 1, 0, 0]) / 6, atol=1e-7)
    logits = -1e4 * np.ones((V, m, T), dtype=np.float32)
    loss, dlogits = softmax_cross_entropy(*on(xp, logits, targets, None, "float32"))
    assert loss == pytest.approx(np.log(V), rel=1e-6)


def test_padding_never_leaks(xp):
    logits, targets, mask = make_batch(np.random.default_rng(4))
    poisoned = logits.copy()
    poisoned[:, ~mask] = np.nan
    targets = targets.copy()
    targets[~mask] = 10**6
    loss, dlogits = softmax_cross_entropy(*on(xp, poisoned, targets, mask))
    assert loss == pytest.approx(reference_loss(logits, np.where(mask, targets, 0), mask), rel=1e-12)
    assert np.all(xseq.to_numpy(dlogits)[:, ~mask] == 0)


def test_mean_over_valid_positions_only():
    logits = np.zeros((2, 1, 4))
    targets = np.zeros((1, 4), dtype=np.int64)
    mask = np.array([[True, False, False, False]])
    loss, d = softmax_cross_entropy(logits, targets, mask)
    assert loss == pytest.approx(np.log(2))
    np.testing.assert_allclose(d[:, 0, 0], [-0.5, 0.5])


@pytest.mark.parametrize(
    "change, error, message",
    [
        ({"logits": np.zeros((5, 3))}, ValueError, r"logits has 2 dimensions, shape \(5, 3\); expected 3"),
        ({"logits": np.zeros((5, 3, 4), dtype=np.int64)}, TypeError, "logits has dtype int64; expected a real float"),
        ({"targets": np.zeros((3, 5), dtype=np.int64)}, ValueError, r"targets has shape \(3, 5\); expected \(m, T_x\)"),
        ({"targets": np.zeros((3, 4))}, TypeError, "targets has dtype float64; expected an integer dtype"),
        ({"targets": np.full((3, 4), 5)}, ValueError, r"targets holds 5 at a valid position; .* < V = 5"),
        ({"targets": np.full((3, 4), -2)}, ValueError, "targets holds -2 at a valid position"),
        ({"mask": np.ones((4, 3), dtype=bool)}, ValueError, r"mask has shape \(4, 3\); expected \(m, T_x\) = \(3, 4\)"),
        ({"mask": np.ones((3, 4))}, TypeError, "mask has dtype float64; expected bool"),
        ({"mask": np.zeros((3, 4), dtype=bool)}, ValueError, "mask has no True position"),
    ],
)
def test_errors(change, error, message):
    args = {"logits": np.zeros((5, 3, 4)), "targets": np.zeros((3, 4), dtype=np.int64), "mask": None}
    args.update(change)
    with pytest.raises(error, match=message):
        softmax_cross_entropy(**args)


def test_mixed_libraries_are_refused():
    strict = xseq.backend("array_api_strict")
    with pytest.raises(TypeError, match="logits is a numpy array but targets is a array_api_strict array"):
        softmax_cross_entropy(np.zeros((2, 1, 1)), strict.zeros((1, 1), dtype=strict.int64))
