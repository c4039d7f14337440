"""zf_unet.tiling: the NumPy and TensorFlow executions of TilePlan agree; ModelGeometry."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

import zf_unet
from zf_unet.models import ModelGeometry, model_geometry
from zf_unet.tiling import TilePlan


def _geometry(margin: int) -> ModelGeometry:
    """A free-size model geometry accepting every size (divisor 1)."""
    return ModelGeometry(depth=1, divisor=1, margin=margin, padding="valid" if margin else "same",
                         min_input=1 + 2 * margin, fixed_size=None, channels=1, num_classes=1)


def test_numpy_and_tensorflow_tile_plans_agree():
    cases = 0
    for blend in ("gaussian", "linear", "none"):
        for margin in (0, 3):
            for tile in (1, 2, 5, 8, 17, 64):
                for overlap in sorted({0, 1, tile // 2, tile - 1}):
                    if overlap >= tile and tile > 1:
                        continue
                    plan = TilePlan.for_geometry(_geometry(margin), tile + 2 * margin,
                                                 overlap, blend)
                    w_np = plan.window(tile)
                    w_tf = plan.window_tf(tf.constant(tile)).numpy()
                    assert w_tf.dtype == np.float64
                    np.testing.assert_allclose(w_tf, w_np, rtol=1e-12, atol=0)
                    for length in (1, 2, 3, tile - 1, tile, tile + 1, 2 * tile + 3, 100):
                        if length < 1 or (length > tile and overlap >= tile):
                            continue
                        out = plan.output_tile(length, 0)
                        assert out == plan.output_tile_tf(tf.constant(length), 0).numpy()
                        starts = plan.tile_starts(length, out)
                        starts_tf = plan.tile_starts_tf(tf.constant(length),
                                                        tf.constant(out)).numpy()
                        np.testing.assert_array_equal(starts_tf, starts)
                        wo = plan.window(out)
                        np.testing.assert_allclose(
                            plan.normaliser_tf(tf.constant(starts_tf), tf.constant(wo),
                                               tf.constant(length)).numpy(),
                            plan.normaliser(starts, wo, length), rtol=1e-12)
                        idx_tf = plan.input_index_tf(tf.constant(starts_tf), tf.constant(out),
                                                     tf.constant(length)).numpy()
                        idx_np = np.stack([plan.input_index(s, out, length) for s in starts])
                        np.testing.assert_array_equal(idx_tf, idx_np)
                        assert idx_np.min() >= 0 and idx_np.max() < length
                        cases += 1
    assert cases > 500


def test_model_geometry_dataclass_matches_the_old_dicts():
    same = zf_unet.build_unet(input_shape=(None, None, 1), depth=3, filters=4, num_classes=1)
    valid = zf_unet.build_unet(input_shape=(None, None, 1), depth=3, filters=4, num_classes=2,
                               padding="valid")
    g = model_geometry(same)
    assert g.as_dict() == dict(depth=3, divisor=4, margin=0, padding="same", min_input=4,
                               fixed_size=None, channels=1, num_classes=1)
    assert dict(g) == g.as_dict() and g["divisor"] == 4 and g.min_output == 4
    g = model_geometry(valid)
    assert g.as_dict() == dict(depth=3, divisor=4, margin=20, padding="valid", min_input=44,
                               fixed_size=None, channels=1, num_classes=2)
    assert g["margin"] == g.margin == 20 and g.min_output == 4
    assert g.max_output_tile(100) == (60, 60) and g.fit_output_tile(7, 60) == 8
    assert model_geometry(valid) is g  # cached
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.margin = 0
    with pytest.raises(KeyError):
        g["nope"]
