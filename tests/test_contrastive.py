"""The contrastive task: NT-Xent against NumPy, augmentation pipelines (both backends), the
meta-loss with a projection head, and exact resume of a run whose views are random."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_train_cli import SMOKE, _cli, _variables, needs_data

from tf_rmaml.augment import make_augmenter, nt_xent
from tf_rmaml.meta import inner_loop
from tf_rmaml.meta.contrastive import ContrastiveConfig, ContrastiveTask, build_head
from tf_rmaml.meta.learner import MetaConfig, MetaLearner
from tf_rmaml.meta.robust import RobustConfig
from tf_rmaml.models.backbones import build_backbone


def _nt_xent_numpy(z1, z2, t):
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / t
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        total += -sim[i, j] + np.log(np.sum(np.exp(sim[i, others])))
    return total / (2 * n)


def test_nt_xent_matches_numpy_and_is_scale_invariant():
    rng = np.random.default_rng(0)
    z1, z2 = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    for t in (0.1, 0.5, 1.0):
        assert float(nt_xent(tf.constant(z1), tf.constant(z2), t)) == pytest.approx(_nt_xent_numpy(z1, z2, t), rel=1e-10)
    scales = rng.uniform(0.1, 10, size=(6, 1))
    assert float(nt_xent(tf.constant(z1 * scales), tf.constant(z2 * 3.0), 0.5)) == pytest.approx(
        float(nt_xent(tf.constant(z1), tf.constant(z2), 0.5)), rel=1e-10)


def test_nt_xent_is_minimal_when_views_coincide_and_differ_from_all_others():
    n, t = 4, 0.5
    z = np.eye(8)[:n]  # orthonormal: each pair coincides, all other views orthogonal... but not anti-aligned
    best = float(nt_xent(tf.constant(z), tf.constant(z), t))
    # Closed form: -log(e^(1/t) / (e^(1/t) + (2n - 2) e^0)).
    assert best == pytest.approx(-np.log(np.exp(1 / t) / (np.exp(1 / t) + 2 * n - 2)), rel=1e-10)
    rng = np.random.default_rng(1)
    for _ in range(5):
        assert float(nt_xent(tf.constant(z), tf.constant(z + 0.3 * rng.standard_normal(z.shape)), t)) > best
    swapped = float(nt_xent(tf.constant(z), tf.constant(z[::-1].copy()), t))
    assert swapped > best + 1.0


@pytest.mark.parametrize("backend", ["keras", "keras_cv"])
@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_augmentations_run_eagerly_and_in_tf_data_keep_range_and_change_images(backend, shape):
    if backend == "keras_cv":
        pytest.importorskip("keras_cv")
    augment = make_augmenter(shape, backend, seed=3)
    x = tf.constant(np.random.default_rng(0).uniform(size=(8, *shape)), tf.float32)
    eager = augment(x)
    mapped = next(iter(tf.data.Dataset.from_tensor_slices(x).batch(8).map(augment)))
    for out in (eager, mapped, tf.function(augment)(x)):
        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
        assert float(tf.reduce_mean(tf.abs(out - x))) > 1e-3
    assert float(tf.reduce_mean(tf.abs(augment(x) - eager))) > 1e-4  # fresh randomness per call


def test_meta_loss_adds_gamma_times_nt_xent_of_the_fine_tuned_features_through_the_head():
    model = build_backbone("conv4", ways=3, input_shape=(16, 16, 1), filters=3, dtype="float64", seed=1)
    head = build_head(model, (6, 4), seed=2, dtype="float64")
    cfg = ContrastiveConfig(gamma_cl=0.3, cl_temperature=0.5)
    task_cl = ContrastiveTask(model, head, cfg, RobustConfig(), (16, 16, 1))
    learner = MetaLearner(model, MetaConfig(inner_steps=1, inner_lr=0.2), keras.optimizers.Adam(1e-3), meta_batch=1,
                          contrastive=task_cl)
    rng = np.random.default_rng(0)
    task = {"support_x": tf.constant(rng.uniform(size=(3, 16, 16, 1))), "support_y": tf.range(3),
            "query_x": tf.constant(rng.uniform(size=(6, 16, 16, 1))), "query_y": tf.range(6) % 3}
    views = (tf.constant(rng.uniform(size=(6, 16, 16, 1))), tf.constant(rng.uniform(size=(6, 16, 16, 1))))
    params = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
    state = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
    head_params = [tf.convert_to_tensor(v.value) for v in head.trainable_variables]
    with tf.GradientTape() as tape:
        tape.watch(head_params)
        loss, metrics, _ = learner.task_loss(params, state, task, None, head_params, views)
    fast, _, _ = inner_loop.adapt(model, params, state, task["support_x"], task["support_y"], steps=1, lr=0.2,
                                  mask=[True] * len(params))
    ce = inner_loop.cross_entropy(inner_loop.forward(model, fast, state, task["query_x"])[0], task["query_y"])

    def z(v):
        feats = keras.Model(model.inputs, model.get_layer("features").output).stateless_call(
            fast[:-2], state, v, training=True)[0]
        return head(feats)

    expected = float(ce) + 0.3 * float(nt_xent(z(views[0]), z(views[1]), 0.5))
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    # The head is meta-learned (it gets a gradient) but never fine-tuned (not among the fast weights).
    assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in tape.gradient(loss, head_params))
    assert len(fast) == len(model.trainable_variables)


@needs_data
def test_a_resumed_contrastive_run_matches_an_unbroken_one(tmp_path):
    common = [f"--flagfile={SMOKE}", "--method=rmaml_out", "--regularizer=trades", "--gamma_cl=0.1",
              "--train_eps_255=8", "--eval_every=0", "--checkpoint_every=2", "--filters=8", "--inner_steps=1"]
    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    _cli("train", *common, f"--train_dir={whole}", "--max_steps=4")
    _cli("train", *common, f"--train_dir={split}", "--max_steps=2")
    _cli("train", *common, f"--train_dir={split}", "--max_steps=4")
    a, b = _variables(whole), _variables(split)
    assert a.keys() == b.keys() and any("augment_state" in k for k in a)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert os.path.exists(os.path.join(whole, "checkpoints"))
