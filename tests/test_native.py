"""The native hot loops against their numpy oracle."""

import numpy as np
import pytest

from segbench import _native
from segbench.tiler import reference


@pytest.mark.parametrize("threads", [1, 0])
@pytest.mark.parametrize("strided", [False, True])
def test_accumulate_matches_numpy(strided, threads):
    rng = np.random.default_rng(0)
    acc = rng.normal(size=(5, 40, 70)).astype(np.float32)
    wsum = rng.random((40, 70)).astype(np.float32)
    big = rng.normal(size=(5, 32, 64)).astype(np.float32)
    logits = big[:, ::2, ::2] if strided else big[:, :16, :32]
    wy, wx = rng.random(16).astype(np.float32), rng.random(32).astype(np.float32)
    a2, s2 = acc.copy(), wsum.copy()
    _native.accumulate(acc, wsum, logits, wy, wx, 20, 30, threads)
    reference.accumulate(a2, s2, logits, wy, wx, 20, 30)
    np.testing.assert_allclose(acc, a2, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(wsum, s2, rtol=1e-6, atol=1e-6)


def test_accumulate_checks_bounds_and_types():
    acc = np.zeros((3, 10, 10), np.float32)
    wsum = np.zeros((10, 10), np.float32)
    logits = np.ones((3, 4, 4), np.float32)
    ones = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="outside"):
        _native.accumulate(acc, wsum, logits, ones, ones, 8, 0)
    with pytest.raises(ValueError, match="class count"):
        _native.accumulate(acc, wsum, np.ones((2, 4, 4), np.float32), ones, ones, 0, 0)
    with pytest.raises(ValueError, match="wx must be a contiguous vector of length 4"):
        _native.accumulate(acc, wsum, logits, ones, np.ones(5, np.float32), 0, 0)
    with pytest.raises(ValueError, match="wy must be a contiguous vector"):
        _native.accumulate(acc, wsum, logits, np.ones(8, np.float32)[::2], ones, 0, 0)
    with pytest.raises(TypeError):
        _native.accumulate(acc, wsum, logits.astype(np.float64), ones, ones, 0, 0)


@pytest.mark.parametrize("threads", [1, 0])
@pytest.mark.parametrize("with_valid", [False, True])
def test_argmax_labels_matches_numpy(with_valid, threads):
    rng = np.random.default_rng(1)
    acc = rng.normal(size=(7, 30, 50)).astype(np.float32)
    wsum = rng.random((30, 50)).astype(np.float32)
    wsum[3, :10] = 0  # no window contributed here
    valid = rng.random((30, 50)) > 0.2 if with_valid else None
    got = _native.argmax_labels(acc, wsum, 25, valid, 255, True, threads)
    want = reference.argmax_labels(acc, wsum, 25, valid, 255, True)
    np.testing.assert_array_equal(got[0], want[0])
    assert np.abs(got[1].astype(int) - want[1].astype(int)).max() <= 1
    assert np.mean(got[1] == want[1]) > 0.99  # off by one only where float rounding decides
    assert (got[0][3, :10] == 255).all() and (got[1][3, :10] == 0).all()
    labels_only = _native.argmax_labels(acc, wsum, 25, valid)
    np.testing.assert_array_equal(labels_only, want[0])
