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


@pytest.mark.parametrize("divisor", [2, 16])
def test_tile_starts_sit_on_the_pooling_grid(divisor):
    geom = ModelGeometry(depth=5, divisor=divisor, margin=0, padding="same",
                         min_input=divisor, fixed_size=None, channels=1, num_classes=1)
    checked = aligned = 0
    for tile in (divisor * 4, divisor * 16):
        for overlap in (0, divisor, tile // 4, tile - 2 * divisor, tile - 1):
            plan = TilePlan.for_geometry(geom, tile, overlap)
            step = tile - overlap
            for length in (tile + 1, 2 * tile - 5, 3 * tile + divisor, 2048, 4096 + 7):
                starts = plan.tile_starts(length, tile)
                tf_starts = plan.tile_starts_tf(tf.constant(length), tf.constant(tile)).numpy()
                np.testing.assert_array_equal(tf_starts, starts)
                assert starts[0] == 0 and starts[-1] == length - tile
                assert np.all(np.diff(starts) > 0) and np.max(np.diff(starts)) <= step
                # exactly as many tiles as the overlap needs: the grid never costs a tile
                n_min = -(-(length - tile) // step) + 1
                assert len(starts) == n_min
                if np.all(starts[:-1] % divisor == 0):
                    aligned += 1
                elif step >= divisor:  # off the grid only when n_min grid steps cannot reach
                    grid = step // divisor * divisor
                    assert (n_min - 1) * grid < -(-(length - tile) // divisor) * divisor
                checked += 1
    assert checked == 50 and aligned >= 30


def test_aligned_tiles_reproduce_the_whole_image_pass():
    """Away from tile edges a U-Net tile computes what one pass over the whole image computes
    when the tile pools on the image's grid: with Gaussian blending the tiled result stays
    close to the whole-image result (tiles that start off the grid differ much more)."""
    import keras

    keras.utils.set_random_seed(0)
    model = zf_unet.build_unet((None, None, 1), depth=3, filters=4, batch_norm=True)
    image = np.random.default_rng(0).random((160, 160), dtype=np.float32)
    whole = np.asarray(model(image[None, ..., None], training=False))[0]
    tiled = zf_unet.predict_tiled(model, image, tile_size=64, overlap=20, blend="gaussian")
    plan = TilePlan.for_geometry(model_geometry(model), 64, 20)
    assert list(plan.tile_starts(160, 64)) == [0, 32, 64, 96]  # all on the grid of 4
    inner = (slice(16, -16),) * 2
    err = np.abs(tiled - whole)[inner].mean()
    shifted = zf_unet.predict_tiled(model, image[1:, 1:], tile_size=64, overlap=20)
    assert err < 0.2 * np.abs(shifted - whole[1:, 1:])[inner].mean()


def test_model_geometry_has_one_home_and_the_tiling_names_are_deprecated():
    import zf_unet.tiling as tiling
    from zf_unet.models import geometry

    assert "ModelGeometry" not in tiling.__all__ and "model_geometry" not in tiling.__all__
    with pytest.warns(DeprecationWarning, match=r"zf_unet.tiling.ModelGeometry is deprecated; "
                                                r"use zf_unet.models.geometry"):
        assert tiling.ModelGeometry is geometry.ModelGeometry
    with pytest.warns(DeprecationWarning, match="model_geometry"):
        from zf_unet.tiling import model_geometry as old
    assert old is geometry.model_geometry is model_geometry
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        tiling.nothing  # noqa: B018
