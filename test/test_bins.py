"""lechpe_model.bins: bin layout, eq. (3) decoding, uncertainty and the range mask."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lechpe_model.bins import (
    DEFAULT_BINS,
    BinSpec,
    angle_to_bin,
    bin_centers,
    decode_expectation,
    decode_std,
    in_range,
)


def test_default_centres():
    centers = bin_centers()
    assert centers.shape == (66,)
    assert centers[0] == pytest.approx(-97.5) and centers[-1] == pytest.approx(97.5)
    np.testing.assert_allclose(np.diff(centers), 3.0)
    np.testing.assert_allclose(centers, DEFAULT_BINS.centers)


def test_centres_equal_paper_eq3_formula():
    # eq. (3): r * (i - (1 + C) / 2) for 1-based i.
    i = np.arange(1, 67)
    np.testing.assert_allclose(bin_centers(), 3.0 * (i - 67 / 2))


@pytest.mark.parametrize(
    ("angle", "index"),
    [
        (-99.0, 0),
        (-96.01, 0),
        (-96.0, 1),
        (0.0, 33),
        (-0.5, 32),
        (98.9, 65),
        (99.0, 65),
        (150.0, 65),
        (-150.0, 0),
    ],
)
def test_angle_to_bin_edges(angle, index):
    # floor((a + 99) / 3) clipped to [0, 65]
    result = angle_to_bin(angle)
    assert result.dtype == np.int64
    assert int(result) == index


def test_angle_centre_lands_in_its_bin():
    np.testing.assert_array_equal(angle_to_bin(bin_centers()), np.arange(66))


@pytest.mark.parametrize("index", [0, 1, 32, 33, 65])
def test_one_hot_decodes_to_its_centre_with_zero_std(index):
    probs = np.zeros(66)
    probs[index] = 1.0
    assert decode_expectation(probs) == pytest.approx(-97.5 + 3.0 * index)
    assert decode_std(probs) == pytest.approx(0.0)


def test_two_bin_mixture_hand_computed():
    # Half the mass on centre -1.5 (bin 32), half on +4.5 (bin 34): mean 1.5, std 3.
    probs = np.zeros(66)
    probs[32] = probs[34] = 0.5
    assert decode_expectation(probs) == pytest.approx(1.5)
    assert decode_std(probs) == pytest.approx(3.0)


def test_left_edge_variant_differs_by_half_a_bin():
    # Peer code's "sum p_i * (3 i - 99)" (left edges) reads 1.5 deg lower.
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(66), size=8)
    left_edges = np.arange(66) * 3.0 - 99.0
    np.testing.assert_allclose(decode_expectation(probs) - probs @ left_edges, 1.5)


def test_batched_decoding_matches_per_row():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(66), size=(4, 3))
    mean = decode_expectation(probs)
    std = decode_std(probs)
    assert mean.shape == std.shape == (4, 3)
    for i in range(4):
        for k in range(3):
            assert mean[i, k] == pytest.approx(decode_expectation(probs[i, k]))
            assert std[i, k] == pytest.approx(
                np.sqrt(np.sum(probs[i, k] * (bin_centers() - mean[i, k]) ** 2))
            )


def test_decode_rejects_wrong_bin_count():
    with pytest.raises(ValueError, match="66 bins"):
        decode_expectation(np.ones((2, 65)) / 65)
    with pytest.raises(ValueError, match="66 bins"):
        decode_std(np.float64(1.0))


def test_custom_spec():
    spec = BinSpec(num_bins=4, bin_width=5.0, angle_limit=10.0)
    np.testing.assert_allclose(spec.centers, [-7.5, -2.5, 2.5, 7.5])
    np.testing.assert_array_equal(angle_to_bin([-10, -5.1, 0, 9.9, 10], spec), [0, 0, 2, 3, 3])
    assert decode_expectation([0.25, 0.25, 0.25, 0.25], spec) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_bins": 66, "bin_width": 3.0, "angle_limit": 90.0}, "do not tile"),
        ({"num_bins": 1}, "num_bins"),
        ({"bin_width": 0.0}, "bin_width"),
    ],
)
def test_inconsistent_spec_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BinSpec(**kwargs)


def test_in_range_mask():
    angles = np.array([[0, 0, 0], [99, -99, 0], [99.01, 0, 0], [0, -120, 0], [0, 0, np.nan]])
    np.testing.assert_array_equal(in_range(angles), [True, True, False, False, False])
    np.testing.assert_array_equal(in_range(angles, limit=50.0), [True, False, False, False, False])
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        in_range(np.zeros(4))


def test_bins_module_does_not_import_torch(repo_root):
    code = "import sys, lechpe_model.bins; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root
    )
    assert out.stdout.strip() == "False"
