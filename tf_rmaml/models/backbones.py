"""Few-shot backbones: the standard MAML Conv-4 and the presets of the paper's code.

Every backbone is a `keras.Sequential` of named layers:
  `block{i}_conv`, `block{i}_relu`, `block{i}_bn`, `block{i}_pool` (blocks 1..n),
  `features` (the flattened representation) and `head` (the `ways`-way linear layer).
The names are how fine-tune masks (`finetune_mask`) and feature extraction find layers.

Inputs are NHWC float images in [0, 1] with no mean/std normalisation (as the paper).
Weights use He init from an *untruncated* normal (std sqrt(2 / fan_in)), as PyTorch's
`kaiming_normal_` in the paper's code; biases start at zero, BN at gamma=1, beta=0.
"""

import dataclasses

import keras
import numpy as np

from tf_rmaml.errors import ConfigError
from tf_rmaml.models.layers import MaxPool, MetaBatchNorm


@dataclasses.dataclass(frozen=True)
class Block:
    filters: int
    kernel: int = 3
    strides: int = 1
    padding: int = 0  # symmetric zero padding, as torch's Conv2d(padding=p)
    pool: int | None = None  # None, or the max-pool stride (kernel is 2)
    relu_first: bool = False  # Conv -> ReLU -> BN (paper's code) vs Conv -> BN -> ReLU


def _conv4(filters):
    # Finn et al. (2017): 3x3 conv "same", BN, ReLU, 2x2 max-pool, four times.
    return [Block(filters, padding=1, pool=2) for _ in range(4)]


def _metaadv_miniimagenet(filters):
    # MetaAdv/dragen1860 MiniImageNet net: valid padding, ReLU before BN, last pool stride 1.
    # 84 -> 82 -> 41 -> 39 -> 19 -> 17 -> 8 -> 6 -> 5: 32 x 5 x 5 = 800-d features.
    return [Block(filters, relu_first=True, pool=2) for _ in range(3)] + [
        Block(filters, relu_first=True, pool=1)
    ]


def _cifar_fs_small(filters):
    # Paper's CIFAR-FS net (filters 16/16/32/32 at the default width 32):
    # 32 -> 16 (stride 2) -> 16 -> pool 8 -> 8 -> 8 -> pool 4: 32 x 4 x 4 = 512-d features.
    half = max(filters // 2, 1)
    return [
        Block(half, strides=2, padding=1, relu_first=True),
        Block(half, padding=1, relu_first=True, pool=2),
        Block(filters, padding=1, relu_first=True),
        Block(filters, padding=1, relu_first=True, pool=2),
    ]


def _omniglot_strided(filters):
    # Paper's Omniglot net: no pooling, strided valid convs: 28 -> 13 -> 6 -> 2 -> 1.
    return [
        Block(filters, strides=2, relu_first=True),
        Block(filters, strides=2, relu_first=True),
        Block(filters, strides=2, relu_first=True),
        Block(filters, kernel=2, relu_first=True),
    ]


BACKBONES = {
    "conv4": (_conv4, 64),
    "metaadv_miniimagenet": (_metaadv_miniimagenet, 32),
    "cifar_fs_small": (_cifar_fs_small, 32),
    "omniglot_strided": (_omniglot_strided, 64),
}


def build_backbone(name, *, ways, input_shape, filters=None, dtype="float32", seed=None):
    """Builds a backbone with a `ways`-way head.

    Args:
      name: a key of `BACKBONES`.
      ways: number of classes of the head.
      input_shape: `(H, W, C)` of the images.
      filters: channel width (default: the preset's; `cifar_fs_small` uses
        filters/2 in its first two blocks).
      dtype: "float32", or "float64" for exact gradient tests.
      seed: integer seed for the initialisers (None: Keras' global RNG).

    Returns:
      A built `keras.Sequential` mapping `[B, H, W, C]` images to `[B, ways]` logits.

    Example:
      model = build_backbone("conv4", ways=5, input_shape=(28, 28, 1), filters=32)
    """
    if name not in BACKBONES:
        raise ConfigError(
            f"Unknown backbone {name!r}. Choose one of: {', '.join(sorted(BACKBONES))}."
        )
    if ways < 2:
        raise ConfigError(f"ways must be >= 2, got {ways}.")
    make_blocks, default_filters = BACKBONES[name]
    blocks = make_blocks(filters or default_filters)
    rng = np.random.default_rng(seed) if seed is not None else None

    def init():
        child = None if rng is None else int(rng.integers(2**31))
        return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal", seed=child)

    layers = [keras.Input(shape=tuple(input_shape), dtype=dtype)]
    for i, block in enumerate(blocks, start=1):
        if block.padding:
            layers.append(keras.layers.ZeroPadding2D(block.padding, name=f"block{i}_pad", dtype=dtype))
        layers.append(
            keras.layers.Conv2D(
                block.filters,
                block.kernel,
                strides=block.strides,
                padding="valid",
                kernel_initializer=init(),
                name=f"block{i}_conv",
                dtype=dtype,
            )
        )
        relu = keras.layers.ReLU(name=f"block{i}_relu", dtype=dtype)
        bn = MetaBatchNorm(name=f"block{i}_bn", dtype=dtype)
        layers.extend([relu, bn] if block.relu_first else [bn, relu])
        if block.pool:
            layers.append(MaxPool(block.pool, name=f"block{i}_pool", dtype=dtype))
    layers.append(keras.layers.Flatten(name="features", dtype=dtype))
    layers.append(keras.layers.Dense(ways, kernel_initializer=init(), name="head", dtype=dtype))
    model = keras.Sequential(layers, name=name)
    return model


FINETUNE_MODES = ("all", "head", "last_block")


def finetune_mask(model, mode="all"):
    """Which trainable variables adapt in the inner loop.

    Returns a tuple of bools aligned with `model.trainable_variables`:
    "all" every variable, "head" the linear head only (ANIL-style), "last_block"
    the last conv block and the head. Variables not masked in are still
    meta-learned in the outer loop.
    """
    if mode not in FINETUNE_MODES:
        raise ConfigError(f"Unknown fine-tune mode {mode!r}. Choose one of: {', '.join(FINETUNE_MODES)}.")
    blocks = sorted({layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("block")})
    keep = {"all": None, "head": ("head",), "last_block": ("head", blocks[-1] + "_")}[mode]
    mask = []
    for layer in model.layers:
        for _ in layer.trainable_variables:
            mask.append(keep is None or any(layer.name.startswith(k) for k in keep))
    if len(mask) != len(model.trainable_variables):
        raise AssertionError("fine-tune mask is out of step with model.trainable_variables")
    return tuple(mask)


def feature_model(model):
    """A model from the input to the `features` layer (the flattened representation)."""
    return keras.Model(model.inputs, model.get_layer("features").output, name=model.name + "_features")
