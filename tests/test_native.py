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


def test_tile_labels_are_numpys_argmax_first_maximum_included():
    from segbench.tiler.accumulate import tile_labels

    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 6, 20, 24)).astype(np.float32)
    logits[0, 4, 5, :] = logits[0, 2, 5, :] = 50.0  # a tie: the first class wins
    np.testing.assert_array_equal(tile_labels(logits), logits.argmax(1))
    assert tile_labels(logits).dtype == np.uint8 and (tile_labels(logits)[0, 5] == 2).all()
    half = logits.astype(np.float16)  # another dtype: numpy's argmax
    np.testing.assert_array_equal(tile_labels(half), half.argmax(1))
    assert tile_labels(logits[:0]).shape == (0, 20, 24)


def test_the_blend_is_one_fused_multiply_add_whatever_the_compiler():
    """acc = fma(logit, weight, acc), rounded once (as torch's addcmul_ on a GPU), not the product
    rounded and then the sum: the device tiler's labels equal the CPU tiler's on every build."""
    rng = np.random.default_rng(5)
    acc = rng.normal(size=(2, 64, 64)).astype(np.float32)
    logits = rng.normal(size=(2, 64, 64)).astype(np.float32)
    wy, wx = rng.random(64).astype(np.float32), rng.random(64).astype(np.float32)
    weight = (wy[:, None] * wx[None, :]).astype(np.float32)  # the weight itself, rounded
    fused = (logits.astype(np.float64) * weight + acc).astype(np.float32)  # exact product, one rounding
    separate = (logits * weight).astype(np.float32) + acc
    out = acc.copy()
    _native.accumulate(out, np.zeros((64, 64), np.float32), logits, wy, wx, 0, 0, 1)
    assert np.array_equal(out, fused)
    assert not np.array_equal(out, separate)  # the data tells the two apart


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32])
def test_outputs_of_another_type_are_refused_not_copied(dtype):
    ones = np.ones(4, np.float32)
    acc = np.zeros((3, 8, 8), dtype)
    with pytest.raises(TypeError):
        _native.accumulate(acc, np.zeros((8, 8), np.float32), np.ones((3, 4, 4), np.float32), ones, ones,
                           0, 0)
    with pytest.raises(TypeError):
        _native.accumulate(np.zeros((3, 8, 8), np.float32), np.zeros((8, 8), dtype),
                           np.ones((3, 4, 4), np.float32), ones, ones, 0, 0)
    with pytest.raises(TypeError):
        _native.argmax_labels(acc, np.zeros((8, 8), np.float32), 8)


def test_dimensions_are_checked_before_shapes_are_read():
    ones = np.ones(4, np.float32)
    for acc in (np.zeros(5, np.float32), np.zeros((5, 5), np.float32), np.float32(0)):
        with pytest.raises(ValueError, match=r"acc must be \(C, H, W\)"):
            _native.accumulate(np.asarray(acc), np.zeros((8, 8), np.float32),
                               np.ones((3, 4, 4), np.float32), ones, ones, 0, 0)
        with pytest.raises(ValueError, match=r"acc must be \(C, H, W\)"):
            _native.argmax_labels(np.asarray(acc), np.zeros((8, 8), np.float32), 1)
    with pytest.raises(ValueError, match="valid must be"):
        _native.argmax_labels(np.zeros((2, 8, 8), np.float32), np.ones((8, 8), np.float32), 8,
                              np.ones(64, bool))


@pytest.mark.parametrize("classes", [0, 256])
def test_zero_classes_or_more_than_255_are_refused(classes):
    acc = np.zeros((classes, 4, 8), np.float32)
    wsum = np.ones((4, 8), np.float32)
    with pytest.raises(ValueError, match="class count must be 1 to 255"):
        _native.argmax_labels(acc, wsum, 4)
    with pytest.raises(ValueError, match="class count must be 1 to 255"):
        _native.accumulate(acc, wsum, np.zeros((classes, 2, 2), np.float32), np.ones(2, np.float32),
                           np.ones(2, np.float32), 0, 0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_logits_are_an_error_and_confidence_stays_defined(bad):
    ones = np.ones(4, np.float32)
    logits = np.zeros((3, 4, 4), np.float32)
    logits[1, 2, 3] = bad
    with pytest.raises(_native.NonFiniteError, match="NaN or infinite"):
        _native.accumulate(np.zeros((3, 4, 4), np.float32), np.zeros((4, 4), np.float32), logits, ones,
                           ones, 0, 0)
    assert issubclass(_native.NonFiniteError, ArithmeticError)
    acc = np.zeros((3, 4, 4), np.float32)
    acc[1, 2, 3] = bad  # an accumulator made elsewhere: defined results, no undefined float-to-int cast
    labels, conf = _native.argmax_labels(acc, np.ones((4, 4), np.float32), 4, confidence=True)
    # NaN and -inf count as the least likely class (two classes left at 0: p = 1/2), +inf wins with
    # no probability to give (0, as for pixels without one)
    assert (labels[2, 3], conf[2, 3]) == ((1, 0) if bad == np.inf else (0, 128))
    assert (labels == np.where(np.arange(16).reshape(4, 4) == 11, labels[2, 3], 0)).all()


def test_an_engine_with_nan_logits_is_one_sentence_naming_it(tmp_path):
    from segbench.engines.base import EngineBase
    from segbench.errors import EngineError
    from segbench.tiler import segment
    from tests.conftest import make_spec, write_scene

    class NanEngine(EngineBase):
        name, device = "nan-engine", "cpu"
        spec = make_spec(tile=32)

        def infer(self, tiles):
            out = np.zeros((len(tiles), 3, 32, 32), np.float32)
            out[:, 1, 5, 5] = np.nan
            return out

        def close(self):
            pass

    scene = write_scene(tmp_path / "s.tif", np.zeros((3, 50, 50), np.uint8))
    with pytest.raises(EngineError, match=r"^nan-engine returned NaN or infinite logits for the window "
                                          r"at row 0, column 0"):
        segment(scene, NanEngine(), tmp_path / "l.tif", batch=2)
    assert not (tmp_path / "l.tif").exists()
