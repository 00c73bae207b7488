"""Attack properties: in the ball and in [0, 1], raise the loss, monotone in steps; an exact case."""

import numpy as np
import pytest
import tensorflow as tf

from tf_rmaml.attacks import core

EPS = 0.1


def _linear_model(seed=0, classes=5, dim=12):
    rng = np.random.default_rng(seed)
    w = tf.constant(rng.standard_normal((dim, classes)), tf.float32)
    b = tf.constant(rng.standard_normal(classes) * 0.1, tf.float32)
    return lambda x: tf.matmul(tf.reshape(x, [tf.shape(x)[0], -1]), w) + b


def _mlp_model(seed=0, classes=5, dim=12):
    rng = np.random.default_rng(seed)
    w1 = tf.constant(rng.standard_normal((dim, 32)) / np.sqrt(dim), tf.float32)
    w2 = tf.constant(rng.standard_normal((32, classes)) / np.sqrt(32), tf.float32)
    return lambda x: tf.matmul(tf.nn.relu(tf.matmul(tf.reshape(x, [tf.shape(x)[0], -1]), w1)), w2) * 4.0


def _data(n=40, seed=1):
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.uniform(size=(n, 2, 2, 3)), tf.float32)  # 12 features, some near 0 and 1
    y = tf.constant(rng.integers(0, 5, n), tf.int32)
    return x, y


SEED = tf.constant([3, 4], tf.int32)


def _attacks(logits_fn, x, y):
    return {
        "fgsm": core.fgsm(logits_fn, x, y, EPS),
        "fgsm_rs": core.fgsm_rs(logits_fn, x, y, EPS, seed=SEED),
        "pgd": core.pgd(logits_fn, x, y, EPS, steps=10, step_size=EPS / 4, seed=SEED),
        "pgd_l2": core.pgd(logits_fn, x, y, 0.5, steps=10, step_size=0.1, seed=SEED, norm="l2"),
        "trades": core.trades_attack(logits_fn, x, EPS, seed=SEED),
        "apgd_ce": core.apgd(logits_fn, x, y, EPS, steps=20, seed=SEED, loss="ce"),
        "apgd_dlr": core.apgd(logits_fn, x, y, EPS, steps=20, seed=SEED, loss="dlr"),
    }


def test_attacks_stay_in_ball_and_box_and_raise_the_loss():
    logits_fn = _mlp_model()
    x, y = _data()
    clean = tf.reduce_sum(core.per_example_loss(logits_fn(x), y))
    for name, x_adv in _attacks(logits_fn, x, y).items():
        x_adv = x_adv.numpy()
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, name
        delta = x_adv - x.numpy()
        if name == "pgd_l2":
            assert np.sqrt((delta**2).reshape(len(delta), -1).sum(1)).max() <= 0.5 + 1e-5
        else:
            assert np.abs(delta).max() <= EPS + 1e-6, name
        if name != "trades":
            assert float(tf.reduce_sum(core.per_example_loss(logits_fn(x_adv), y))) > float(clean), name


def test_trades_attack_raises_kl():
    logits_fn = _mlp_model()
    x, _ = _data()
    p = tf.nn.softmax(logits_fn(x))
    x_adv = core.trades_attack(logits_fn, x, EPS, seed=SEED, steps=5)
    kl = core.per_example_loss(logits_fn(x_adv), p, "kl")
    assert float(tf.reduce_min(kl)) >= -1e-6 and float(tf.reduce_sum(kl)) > 1e-3
    np.testing.assert_allclose(core.per_example_loss(logits_fn(x), p, "kl"), 0.0, atol=1e-5)


def test_more_pgd_steps_never_lower_the_loss_reached():
    logits_fn = _mlp_model(seed=2)
    x, y = _data(seed=3)
    losses = []
    for steps in (1, 2, 5, 10, 20):
        x_adv = core.pgd(logits_fn, x, y, EPS, steps=steps, step_size=EPS / 4, seed=SEED)
        losses.append(float(tf.reduce_sum(core.per_example_loss(logits_fn(x_adv), y))))
    assert all(b >= a - 1e-5 for a, b in zip(losses, losses[1:])), losses


def test_pgd_finds_the_closed_form_optimum_of_a_linear_margin():
    # Two classes, logits z = x W: CE is monotone in the margin (w_y - w_other) . x, so under
    # L-inf the maximiser is x - eps * sign(w_y - w_other), clipped to [0, 1].
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 2)).astype(np.float32)
    logits_fn = lambda x: tf.matmul(tf.reshape(x, [tf.shape(x)[0], -1]), w)  # noqa: E731
    x = tf.constant(rng.uniform(0.2, 0.8, size=(16, 2, 2, 3)), tf.float32)
    y = rng.integers(0, 2, 16)
    x_adv = core.pgd(logits_fn, x, tf.constant(y, tf.int32), EPS, steps=20, step_size=EPS / 2, seed=SEED)
    margin_dir = (w[:, 0] - w[:, 1])[None] * np.where(y == 0, 1.0, -1.0)[:, None]  # d(z_y - z_o)/dx
    expected = np.clip(x.numpy().reshape(16, -1) - EPS * np.sign(margin_dir), 0, 1)
    np.testing.assert_allclose(x_adv.numpy().reshape(16, -1), expected, atol=1e-6)


def test_attacks_compile_in_tf_function_and_xla():
    logits_fn = _mlp_model()
    x, y = _data()

    def run(x, y):
        return core.pgd(logits_fn, x, y, EPS, steps=5, step_size=EPS / 4, seed=SEED)

    eager = run(x, y)
    np.testing.assert_allclose(tf.function(run)(x, y), eager, atol=1e-6)
    # XLA on CPU draws other stateless random numbers (its own Philox lowering), so the random
    # start differs: check the properties, not the values.
    xla = tf.function(run, jit_compile=True)(x, y).numpy()
    assert np.abs(xla - x.numpy()).max() <= EPS + 1e-6 and 0 <= xla.min() and xla.max() <= 1
    loss = lambda z: float(tf.reduce_sum(core.per_example_loss(logits_fn(z), y)))  # noqa: E731
    assert loss(xla) > loss(x) and abs(loss(xla) - loss(eager)) < 0.1 * abs(loss(eager))


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="Unknown attack loss"):
        core.per_example_loss(tf.zeros([2, 3]), tf.zeros([2], tf.int32), "hinge")


def test_apgd_counts_an_example_fooled_at_any_iterate():
    logits_fn = _mlp_model(seed=2)
    x, y = _data(seed=3)
    x_best, fooled = core.apgd(logits_fn, x, y, EPS, steps=20, seed=SEED, loss="ce", return_fooled=True)
    wrong_at_best = tf.not_equal(tf.argmax(logits_fn(x_best), -1, output_type=tf.int32), y).numpy()
    fooled = fooled.numpy()
    # Every example the returned point fools is in `fooled`; `fooled` can only add to it.
    assert np.all(fooled[wrong_at_best]) and fooled.sum() >= wrong_at_best.sum()
    np.testing.assert_array_equal(x_best, core.apgd(logits_fn, x, y, EPS, steps=20, seed=SEED, loss="ce"))


def test_apgd_adapts_each_example_on_its_own():
    """Without coupling between examples (no batch norm), APGD on a batch is APGD on each example
    alone: step sizes, restarts from the best point and best points are per example."""
    logits_fn = _mlp_model(seed=4)
    x, y = _data(n=6, seed=7)
    batch, fooled = core.apgd(logits_fn, x, y, EPS, steps=30, loss="ce", return_fooled=True)
    for i in range(6):
        alone, alone_fooled = core.apgd(logits_fn, x[i:i + 1], y[i:i + 1], EPS, steps=30, loss="ce", return_fooled=True)
        np.testing.assert_allclose(batch[i:i + 1].numpy(), alone.numpy(), atol=1e-6)
        assert bool(fooled[i]) == bool(alone_fooled[0])
