"""R-MAML_out, R-MAML_both, ADML, AQ: meta-losses against hand computations, and which weights
each attack sees; the meta-gradient with a real training attack against finite differences."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_rmaml.errors import ConfigError
from tf_rmaml.meta import inner_loop, robust
from tf_rmaml.meta.learner import MetaConfig, MetaLearner
from tf_rmaml.meta.robust import RobustConfig
from tf_rmaml.models.backbones import build_backbone

WAYS, SHOTS, QUERIES, SHAPE, LR, STEPS = 3, 2, 2, (16, 16, 1), 0.3, 2
DELTA = 0.03


def _setup(robust_config, steps=STEPS, filters=3, adv_optimizer=None):
    model = build_backbone("conv4", ways=WAYS, input_shape=SHAPE, filters=filters, dtype="float64", seed=5)
    rng = np.random.default_rng(2)
    task = {
        "support_x": tf.constant(rng.uniform(size=(WAYS * SHOTS,) + SHAPE)),
        "support_y": tf.constant(np.repeat(np.arange(WAYS), SHOTS).astype(np.int32)),
        "query_x": tf.constant(rng.uniform(size=(WAYS * QUERIES,) + SHAPE)),
        "query_y": tf.constant(np.repeat(np.arange(WAYS), QUERIES).astype(np.int32)),
    }
    learner = MetaLearner(model, MetaConfig(inner_steps=steps, inner_lr=LR), keras.optimizers.Adam(1e-3),
                          meta_batch=1, robust=robust_config, adv_optimizer=adv_optimizer)
    params = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
    state = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
    return model, learner, task, params, state


def _fixed_delta(x):
    """A fixed, input-dependent perturbation (deterministic, inside the ball and [0, 1])."""
    pattern = np.sign(np.sin(np.arange(np.prod(x.shape)).reshape(x.shape)))
    return tf.clip_by_value(x + DELTA * pattern, 0.0, 1.0)


@pytest.fixture
def recorded(monkeypatch):
    """Replaces the training attack by `_fixed_delta`, recording the weights it was given."""
    calls = []

    def fake(model, params, state, x, target, config, seed, loss, training=True):
        calls.append({"params": [np.asarray(p) for p in params], "x": np.asarray(x), "loss": loss})
        return _fixed_delta(x)

    monkeypatch.setattr(robust, "perturb", fake)
    return calls


def _ce(model, params, state, x, y):
    return float(inner_loop.cross_entropy(inner_loop.forward(model, params, state, x)[0], y))


def _kl(model, params, state, x):
    p = tf.nn.softmax(inner_loop.forward(model, params, state, x)[0])
    q = tf.nn.softmax(inner_loop.forward(model, params, state, _fixed_delta(x))[0])
    return float(tf.reduce_mean(tf.reduce_sum(p * (tf.math.log(p) - tf.math.log(q)), -1)))


def _adapt(model, params, state, x, y):
    mask = [True] * len(params)
    fast, _, _ = inner_loop.adapt(model, params, state, x, y, steps=STEPS, lr=LR, mask=mask)
    return fast


def _same(a, b):
    return all(np.allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-12) for x, y in zip(a, b))


def test_rmaml_out_at_loss_and_attack_at_fine_tuned_weights(recorded):
    model, learner, task, params, state = _setup(RobustConfig("rmaml_out", "at", gamma_out=0.7))
    loss, metrics, _ = learner.task_loss(params, state, task)
    fast = _adapt(model, params, state, task["support_x"], task["support_y"])
    qx, qy = task["query_x"], task["query_y"]
    expected = _ce(model, fast, state, qx, qy) + 0.7 * _ce(model, fast, state, _fixed_delta(qx), qy)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert len(recorded) == 1 and recorded[0]["loss"] == "ce"
    assert _same(recorded[0]["params"], fast) and not _same(recorded[0]["params"], params)
    np.testing.assert_array_equal(recorded[0]["x"], qx.numpy())


def test_rmaml_out_trades_covers_support_query_and_unlabeled(recorded):
    model, learner, task, params, state = _setup(RobustConfig("rmaml_out", "trades"))
    task = dict(task, unlabeled_x=tf.constant(np.random.default_rng(4).uniform(size=(4,) + SHAPE)))
    loss, _, _ = learner.task_loss(params, state, task)
    fast = _adapt(model, params, state, task["support_x"], task["support_y"])
    x_all = tf.concat([task["support_x"], task["query_x"], task["unlabeled_x"]], 0)
    expected = _ce(model, fast, state, task["query_x"], task["query_y"]) + 5.0 * _kl(model, fast, state, x_all)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert recorded[0]["loss"] == "kl" and recorded[0]["x"].shape[0] == WAYS * (SHOTS + QUERIES) + 4
    assert _same(recorded[0]["params"], fast)


def test_rmaml_both_chains_the_adversarial_inner_steps(recorded):
    model, learner, task, params, state = _setup(RobustConfig("rmaml_both", "at", gamma_out=0.2, gamma_in=0.5))
    loss, _, _ = learner.task_loss(params, state, task)
    sx, sy = task["support_x"], task["support_y"]
    # By hand: each step descends CE(p; S) + 0.5 CE(p; S + delta) from the *current* p.
    p, visited = list(params), []
    for _ in range(STEPS):
        visited.append(p)
        with tf.GradientTape() as tape:
            tape.watch(p)
            inner = inner_loop.cross_entropy(inner_loop.forward(model, p, state, sx)[0], sy)
            inner += 0.5 * inner_loop.cross_entropy(inner_loop.forward(model, p, state, _fixed_delta(sx))[0], sy)
        p = [w - LR * g for w, g in zip(p, tape.gradient(inner, p))]
    qx, qy = task["query_x"], task["query_y"]
    expected = _ce(model, p, state, qx, qy) + 0.2 * _ce(model, p, state, _fixed_delta(qx), qy)
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    # Support attacks at the current fast weights (not re-anchored to the meta-weights), then the query attack.
    assert len(recorded) == STEPS + 1
    assert _same(recorded[0]["params"], visited[0]) and _same(recorded[1]["params"], visited[1])
    assert not _same(recorded[1]["params"], params)
    assert _same(recorded[2]["params"], p)


def test_aq_is_the_adversarial_query_loss_only(recorded):
    model, learner, task, params, state = _setup(RobustConfig("aq", "at"))
    loss, _, _ = learner.task_loss(params, state, task)
    fast = _adapt(model, params, state, task["support_x"], task["support_y"])
    expected = _ce(model, fast, state, _fixed_delta(task["query_x"]), task["query_y"])
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert _same(recorded[0]["params"], fast)


def test_adml_pairs_adversarial_support_with_clean_query_and_vice_versa(recorded):
    model, learner, task, params, state = _setup(RobustConfig("adml", "at"))
    loss, _, _ = learner.task_loss(params, state, task)
    sx, sy, qx, qy = task["support_x"], task["support_y"], task["query_x"], task["query_y"]
    fast_adv = _adapt(model, params, state, _fixed_delta(sx), sy)
    fast_cln = _adapt(model, params, state, sx, sy)
    expected = 0.5 * (_ce(model, fast_adv, state, qx, qy) + _ce(model, fast_cln, state, _fixed_delta(qx), qy))
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    # The support is attacked at the meta-weights, the query at the clean fine-tuned weights.
    assert _same(recorded[0]["params"], params) and _same(recorded[1]["params"], fast_cln)


def test_maml_loss_is_unchanged_by_the_robust_machinery(recorded):
    model, learner, task, params, state = _setup(RobustConfig("maml"))
    loss, _, _ = learner.task_loss(params, state, task)
    fast = _adapt(model, params, state, task["support_x"], task["support_y"])
    assert float(loss) == pytest.approx(_ce(model, fast, state, task["query_x"], task["query_y"]), rel=1e-12)
    assert not recorded


@pytest.mark.parametrize("config", [
    RobustConfig("rmaml_out", "at", train_eps=8 / 255),
    RobustConfig("rmaml_out", "trades", train_eps=8 / 255),
    RobustConfig("rmaml_both", "at", train_eps=8 / 255, gamma_in=1.0, train_attack="pgd", train_attack_steps=2),
])
def test_meta_gradient_with_a_real_attack_matches_finite_differences(config):
    """The perturbation is piecewise constant in the weights (sign steps), so the true derivative
    treats it as a constant: exactly what stop_gradient gives. Second order throughout."""
    model, learner, task, params, state = _setup(config, filters=4)
    seed = tf.constant([3, 9], tf.int64)
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss, _, _ = learner.task_loss(params, state, task, seed)
    grads = tape.gradient(loss, params)
    rng, h = np.random.default_rng(7), 1e-7
    for _ in range(3):
        d = [rng.standard_normal(p.shape) for p in params]
        plus = learner.task_loss([p + h * di for p, di in zip(params, d)], state, task, seed)[0]
        minus = learner.task_loss([p - h * di for p, di in zip(params, d)], state, task, seed)[0]
        fd = float(plus - minus) / (2 * h)
        analytic = sum(float(np.sum(g.numpy() * di)) for g, di in zip(grads, d))
        assert abs(fd - analytic) <= 1e-5 * max(abs(fd), 1e-8), (fd, analytic)


def test_the_training_attack_raises_the_robust_term():
    model, learner, task, params, state = _setup(RobustConfig("rmaml_out", "at", train_eps=8 / 255), filters=4)
    fast = _adapt(model, params, state, task["support_x"], task["support_y"])
    qx, qy = task["query_x"], task["query_y"]
    for attack in ("fgsm_rs", "pgd"):
        cfg = RobustConfig("rmaml_out", "at", train_eps=8 / 255, train_attack=attack)
        x_adv = robust.perturb(model, fast, state, qx, qy, cfg, tf.constant([1, 2], tf.int64), "ce")
        assert np.abs(x_adv - qx).max() <= 8 / 255 + 1e-12
        assert _ce(model, fast, state, x_adv, qy) > _ce(model, fast, state, qx, qy)


def test_two_optimizers_split_the_clean_and_robust_gradients():
    config = RobustConfig("rmaml_out", "at", outer_update="two_optimizers", train_eps=4 / 255)
    model, learner, task, params, state = _setup(config, adv_optimizer=keras.optimizers.Adam(2e-4))
    batch = {k: v[None] for k, v in task.items()}
    grads, metrics, _ = learner._replica_grads_fn(batch, 0)
    n = len(params)
    assert len(grads) == 2 * n
    zero = tf.constant(0, tf.int64)  # fold_in's result depends on the dtype of its data
    seed = tf.random.experimental.stateless_fold_in(tf.random.experimental.stateless_fold_in(
        tf.constant([0, 4242], tf.int64), zero), zero)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        _, m, _ = learner.task_loss(params, state, task, seed)
    for got, want in zip(grads[:n], tape.gradient(m["clean_loss"], params)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    for got, want in zip(grads[n:], tape.gradient(m["robust_loss"], params)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    before = [v.numpy() for v in model.trainable_variables]
    learner.apply(grads, [v.value for v in model.non_trainable_variables])
    assert int(learner.optimizer.iterations) == 1 and int(learner.adv_optimizer.iterations) == 1
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "rmaml"}, "Unknown --method"),
    ({"method": "aq", "regularizer": "trades"}, "--regularizer=at"),
    ({"train_eps": 2.0}, "--train_eps must be in [0, 1]"),
    ({"train_attack_steps": 0}, "--train_attack_steps must be >= 1"),
    ({"gamma_out": -1.0}, "--gamma_out must be >= 0"),
    ({"method": "maml", "outer_update": "two_optimizers"}, "needs a clean and a robust term"),
])
def test_bad_robust_config_is_one_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RobustConfig(**kwargs)
