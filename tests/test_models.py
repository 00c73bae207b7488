"""Backbones: the paper's presets, exact layers, Keras serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_rmaml.models.backbones import build_backbone, feature_model, finetune_mask
from tf_rmaml.models.layers import MaxPool, MetaBatchNorm


def _trainable(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def test_metaadv_miniimagenet_has_32901_parameters_and_800d_features():
    model = build_backbone("metaadv_miniimagenet", ways=5, input_shape=(84, 84, 3))
    assert _trainable(model) == 32901
    assert model.get_layer("features").output.shape[-1] == 800


@pytest.mark.parametrize(
    "name,shape,features",
    [("conv4", (84, 84, 3), 5 * 5 * 64), ("conv4", (28, 28, 1), 64), ("cifar_fs_small", (32, 32, 3), 512),
     ("omniglot_strided", (28, 28, 1), 64)],
)
def test_feature_sizes_of_the_presets(name, shape, features):
    model = build_backbone(name, ways=5, input_shape=shape)
    assert model.get_layer("features").output.shape[-1] == features
    assert model(np.zeros((2,) + shape, np.float32)).shape == (2, 5)
    assert feature_model(model)(np.zeros((2,) + shape, np.float32)).shape == (2, features)


def test_layer_order_of_the_paper_code_is_relu_before_bn():
    names = [layer.name for layer in build_backbone("metaadv_miniimagenet", ways=5, input_shape=(84, 84, 3)).layers]
    assert names.index("block1_relu") < names.index("block1_bn")
    names = [layer.name for layer in build_backbone("conv4", ways=5, input_shape=(28, 28, 1)).layers]
    assert names.index("block1_bn") < names.index("block1_relu")


def test_init_is_untruncated_he_normal():
    model = build_backbone("conv4", ways=5, input_shape=(28, 28, 1), filters=64, seed=0)
    kernel = model.get_layer("block2_conv").kernel.numpy()
    std = np.sqrt(2.0 / (3 * 3 * 64))
    assert kernel.std() == pytest.approx(std, rel=0.05)
    # A truncated normal never exceeds 2 std; 73,728 untruncated draws do.
    assert np.abs(kernel).max() > 2.5 * std
    assert np.all(model.get_layer("block2_conv").bias.numpy() == 0)


def test_meta_batchnorm_normalises_with_batch_moments():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(6, 4, 4, 3)).astype(np.float64)
    bn = MetaBatchNorm(dtype="float64")
    y = bn(x, training=True).numpy()
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), atol=1e-12)


@pytest.mark.parametrize("strides,size", [(2, 8), (2, 7), (1, 6)])
def test_maxpool_matches_keras(strides, size):
    x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
    ours = MaxPool(strides)(x).numpy()
    ref = keras.layers.MaxPool2D(2, strides=strides, padding="valid")(x).numpy()
    np.testing.assert_array_equal(ours, ref)


def test_saved_keras_model_reloads_with_the_same_outputs(tmp_path):
    model = build_backbone("metaadv_miniimagenet", ways=5, input_shape=(84, 84, 3), seed=0)
    x = np.random.default_rng(0).uniform(size=(3, 84, 84, 3)).astype(np.float32)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(x, training=True), model(x, training=True), atol=1e-6)
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-6)


def test_finetune_masks():
    model = build_backbone("conv4", ways=5, input_shape=(28, 28, 1))
    paths = [v.path for v in model.trainable_variables]
    head = finetune_mask(model, "head")
    last = finetune_mask(model, "last_block")
    assert [p for p, m in zip(paths, head) if m] == ["conv4/head/kernel", "conv4/head/bias"]
    assert all("block4" in p or "head" in p for p, m in zip(paths, last) if m) and sum(last) == 6
    assert all(finetune_mask(model, "all"))
    with pytest.raises(ValueError, match="Unknown fine-tune mode"):
        finetune_mask(model, "middle")


def test_unknown_backbone_names_the_choices():
    with pytest.raises(ValueError, match="Choose one of: cifar_fs_small, conv4"):
        build_backbone("resnet", ways=5, input_shape=(28, 28, 1))


def test_float64_backbone_is_float64():
    model = build_backbone("conv4", ways=3, input_shape=(16, 16, 1), filters=4, dtype="float64")
    assert model(tf.zeros((2, 16, 16, 1), tf.float64)).dtype == tf.float64
