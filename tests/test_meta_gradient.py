"""The gate: the full meta-gradient of the real Conv-4 against central finite differences.

float64, batch-norm in batch mode, max-pool, two inner steps, every execution mode we
ship (eager, tf.function, XLA). Directional derivatives along random directions test
every parameter at once; a step of 1e-7 keeps clear of ReLU/max kinks.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_rmaml.meta import inner_loop
from tf_rmaml.meta.learner import MetaConfig, MetaLearner
from tf_rmaml.models.backbones import build_backbone, finetune_mask

WAYS, SHOTS, QUERIES = 3, 2, 2


def _setup(first_order=False, backbone="conv4", input_shape=(16, 16, 1), finetune="all", steps=2):
    model = build_backbone(backbone, ways=WAYS, input_shape=input_shape, filters=4, dtype="float64", seed=3)
    rng = np.random.default_rng(0)
    task = {
        "support_x": rng.uniform(size=(WAYS * SHOTS,) + input_shape),
        "support_y": np.repeat(np.arange(WAYS), SHOTS).astype(np.int32),
        "query_x": rng.uniform(size=(WAYS * QUERIES,) + input_shape),
        "query_y": np.repeat(np.arange(WAYS), QUERIES).astype(np.int32),
    }
    batch = {k: tf.constant(v[None]) for k, v in task.items()}
    config = MetaConfig(inner_steps=steps, inner_lr=0.3, first_order=first_order, finetune=finetune)
    learner = MetaLearner(model, config, keras.optimizers.Adam(1e-3), meta_batch=1)
    return model, learner, batch, task


def _loss_at(model, learner, task, params):
    state = [v.value for v in model.non_trainable_variables]
    loss, _, _ = learner.task_loss(params, state, {k: tf.constant(v) for k, v in task.items()})
    return float(loss)


def _directional_errors(model, learner, task, grads, directions=6, h=1e-7):
    params = [v.numpy() for v in model.trainable_variables]
    rng = np.random.default_rng(1)
    errors = []
    for _ in range(directions):
        d = [rng.standard_normal(p.shape) for p in params]
        plus = _loss_at(model, learner, task, [tf.constant(p + h * di) for p, di in zip(params, d)])
        minus = _loss_at(model, learner, task, [tf.constant(p - h * di) for p, di in zip(params, d)])
        fd = (plus - minus) / (2 * h)
        analytic = sum(float(np.sum(g.numpy() * di)) for g, di in zip(grads, d))
        errors.append(abs(fd - analytic) / max(abs(fd), 1e-8))
    return np.array(errors)


def _grads(learner, batch, mode):
    if mode == "eager":
        grads, _, _ = learner._replica_grads_fn(batch)
    elif mode == "function":
        grads, _, _ = tf.function(learner._replica_grads_fn)(batch)
    else:
        grads, _, _ = tf.function(learner._replica_grads_fn, jit_compile=True)(batch)
    return grads


@pytest.mark.parametrize(
    "mode,backbone,input_shape",
    [(mode, "conv4", (16, 16, 1)) for mode in ("eager", "function", "xla")]
    + [
        ("xla", "metaadv_miniimagenet", (46, 46, 1)),
        ("xla", "omniglot_strided", (28, 28, 1)),
        ("function", "cifar_fs_small", (16, 16, 3)),
    ],
)
def test_second_order_meta_gradient_matches_finite_differences(mode, backbone, input_shape):
    model, learner, batch, task = _setup(backbone=backbone, input_shape=input_shape)
    grads = _grads(learner, batch, mode)
    errors = _directional_errors(model, learner, task, grads)
    assert errors.max() <= 1e-5, f"relative errors {errors}"


def test_first_order_differs_from_finite_differences():
    model, learner, batch, task = _setup(first_order=True)
    grads = _grads(learner, batch, "function")
    errors = _directional_errors(model, learner, task, grads)
    # FOMAML drops the Hessian term: far from the true meta-gradient.
    assert errors.max() > 1e-2, f"first-order unexpectedly exact: {errors}"


def test_first_order_gradient_is_query_gradient_at_adapted_weights():
    model, learner, batch, task = _setup(first_order=True)
    grads = _grads(learner, batch, "eager")
    params = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    fast, state, _ = inner_loop.adapt(
        model, params, state, task["support_x"], task["support_y"], steps=2, lr=0.3, mask=learner.mask
    )
    fast = [tf.convert_to_tensor(f) for f in fast]
    with tf.GradientTape() as tape:
        tape.watch(fast)
        logits, _ = inner_loop.forward(model, fast, state, task["query_x"])
        loss = inner_loop.cross_entropy(logits, task["query_y"])
    expected = tape.gradient(loss, fast)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-10, atol=1e-12)


def test_stock_keras_batchnorm_is_wrong_at_second_order():
    """Documents why MetaBatchNorm exists: swap it for Keras' and the gate fails."""
    model, learner, batch, task = _setup()
    stock = build_backbone("conv4", ways=WAYS, input_shape=(16, 16, 1), filters=4, dtype="float64", seed=3)
    layers = [keras.Input((16, 16, 1), dtype="float64")]
    for layer in stock.layers:
        if layer.name.endswith("_bn"):
            layers.append(keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, dtype="float64", name=layer.name))
        else:
            layers.append(layer)
    stock_model = keras.Sequential(layers)
    for v_new, v_old in zip(stock_model.weights, model.weights):
        v_new.assign(v_old)
    stock_learner = MetaLearner(stock_model, learner.config, keras.optimizers.Adam(1e-3), meta_batch=1)
    grads = _grads(stock_learner, batch, "eager")
    errors = _directional_errors(stock_model, stock_learner, task, grads)
    assert errors.max() > 1e-3


def test_finetune_mask_freezes_tensors_in_inner_loop():
    model, learner, batch, task = _setup(finetune="head")
    params = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    fast, _, _ = inner_loop.adapt(
        model, params, state, task["support_x"], task["support_y"], steps=3, lr=0.3,
        mask=finetune_mask(model, "head"),
    )
    names = [v.path for v in model.trainable_variables]
    for name, p, f in zip(names, params, fast):
        changed = not np.array_equal(np.asarray(p), np.asarray(f))
        assert changed == ("/head/" in name), name
