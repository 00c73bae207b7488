"""What the meta-model's features respond to: activation maximisation and input saliency.

Activation maximisation follows the paper's code (Engstrom et al.'s "robustness as a prior"): start
from a constant gray image (0.2, plus fixed 1e-6 Gaussian noise), take `steps` unnormalised
gradient-ascent steps of `step_size` on one unit of the flattened feature, clip to [0, 1] (no
eps-ball). It is run for the meta-model and for the model *actually* fine-tuned on a test task; the
paper's code draws the un-tuned meta-model in its "fine-tuned" panel (it builds the visualiser
from a copy of the network whose parameters fine-tuning never touched).

Batch norm: `bn_mode="running"` (default) uses the stored moving statistics. The paper's code uses
batch statistics over its 5 near-identical seed images, where the batch variance is ~1e-12 and
normalisation mostly amplifies the seed noise; `bn_mode="batch"` reproduces that if wanted.
"""

import numpy as np
import tensorflow as tf
from PIL import Image

from tf_rmaml.errors import ConfigError
from tf_rmaml.meta import inner_loop
from tf_rmaml.models.backbones import feature_model


def feature_fn(model, params, state, training=False):
    """`images -> [B, D]` flattened features of `model` at explicit weights `params`/`state`."""
    features = feature_model(model)
    wanted = {id(v) for v in features.trainable_variables}
    feature_params = [p for v, p in zip(model.trainable_variables, params) if id(v) in wanted]

    def fn(x):
        return features.stateless_call(list(feature_params), list(state), x, training=training)[0]

    return fn


def feature_size(model):
    return int(model.get_layer("features").output.shape[-1])


def maximize_unit(fn, image_shape, unit, *, steps=1000, step_size=0.1, gray=0.2, batch=5, noise=1e-6, seed=0):
    """Gradient ascent on unit `unit` of `fn(x)` from a gray image.

    Returns `(x0, x_star, activations)`: the seed and the result (first image of the batch,
    [H, W, C] in [0, 1]) and the unit's mean activation before and after, as floats.
    """
    rng = np.random.default_rng(seed)
    x0 = tf.constant(np.clip(gray + noise * rng.standard_normal((batch, *image_shape)), 0, 1), tf.float32)

    def activation(delta):
        return tf.reduce_sum(fn(tf.clip_by_value(x0 + delta, 0.0, 1.0))[:, unit])

    @tf.function
    def ascend():
        delta = tf.zeros_like(x0)
        for _ in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                value = activation(delta)
            delta += step_size * tape.gradient(value, delta)
        return delta

    before = float(activation(tf.zeros_like(x0))) / batch
    delta = ascend()
    x_star = tf.clip_by_value(x0 + delta, 0.0, 1.0)
    after = float(activation(delta)) / batch
    return x0[0].numpy(), x_star[0].numpy(), (before, after)


def saliency(model, params, state, x, y, training=True):
    """`[B, H, W]` |d logit_y / d x|, max over channels, each map scaled to [0, 1]."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits, _ = inner_loop.forward(model, params, state, x, training=training)
        picked = tf.reduce_sum(tf.gather(logits, tf.cast(y, tf.int32), batch_dims=1))
    g = tf.reduce_max(tf.abs(tape.gradient(picked, x)), axis=-1).numpy()
    return g / np.maximum(g.reshape(len(g), -1).max(1), 1e-12)[:, None, None]


def fine_tune(model, task, *, steps, lr, mask):
    """The meta-model fine-tuned on `task`'s clean support set (as rmaml-eval does).

    Returns `(params, state)`: adapted weights, and the meta-model's batch-norm state."""
    params = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    fast, _, _ = inner_loop.adapt(model, params, state, task["support_x"], task["support_y"], steps=steps, lr=lr,
                                  mask=mask, first_order=True)
    return [tf.convert_to_tensor(f) for f in fast], state


def visualize(panels, image_shape, units, *, steps=1000, step_size=0.1, bn_mode="running"):
    """Activation maximisation of `units` for each panel.

    Args:
      panels: list of `(name, model, params, state)`.
      units: indices into the flattened feature.

    Returns a dict name -> list over units of `(x0, x_star, (act_before, act_after))`.
    """
    if bn_mode not in ("running", "batch"):
        raise ConfigError(f"--bn_mode must be running or batch, got {bn_mode!r}.")
    out = {}
    for name, model, params, state in panels:
        size = feature_size(model)
        for u in units:
            if not 0 <= u < size:
                raise ConfigError(f"Unit {u} is outside the feature of {model.name} (size {size}); use 0..{size - 1}.")
        fn = feature_fn(model, params, state, training=bn_mode == "batch")
        out[name] = [maximize_unit(fn, image_shape, u, steps=steps, step_size=step_size) for u in units]
    return out


def _tile(image):
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.clip(image, 0, 1)


def grid(rows, pad=2):
    """A [H', W', 3] float image of rows of equally sized images (white padding)."""
    h, w = _tile(rows[0][0]).shape[:2]
    cols = max(len(r) for r in rows)
    out = np.ones((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), np.float32)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            out[pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = _tile(image)
    return out


def activation_rows(results):
    """Three rows per panel, as the paper: seed, result, perturbation |x* - x0| (scaled to [0, 1])."""
    rows = []
    for name, per_unit in results.items():
        rows.append([x0 for x0, _, _ in per_unit])
        rows.append([xs for _, xs, _ in per_unit])
        rows.append([np.abs(xs - x0) / max(float(np.abs(xs - x0).max()), 1e-12) for x0, xs, _ in per_unit])
    return rows


def save_png(image, path, scale=4):
    """Writes a [H, W, 3] float image in [0, 1], enlarged `scale` times (nearest neighbour)."""
    pixels = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST).save(path)
    return path
