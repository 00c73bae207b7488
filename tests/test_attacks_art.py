"""Cross-check against an independent implementation: ART's PGD on the same Keras model and inputs."""

import numpy as np
import pytest
import tensorflow as tf

art = pytest.importorskip("art", reason="adversarial-robustness-toolbox (a dev extra) is not installed")
import keras  # noqa: E402
from art.attacks.evasion import ProjectedGradientDescent  # noqa: E402
from art.estimators.classification import TensorFlowV2Classifier  # noqa: E402

from tf_rmaml.attacks import core  # noqa: E402


def _problem(n=600, seed=0):
    # Five classes of 8x8 images: a class-specific bright square on noise. Learnable in seconds,
    # and eps = 0.1 is large enough that robust accuracy is neither 0 nor 100%.
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    x = rng.uniform(0, 0.5, size=(n, 8, 8, 1)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 3)
        x[i, 2 * r:2 * r + 3, 2 * col:2 * col + 3, 0] += 0.4
    return np.clip(x, 0, 1), y.astype(np.int64)


def _trained_model():
    """A small conv net fitted to `_problem` (the same weights on every call)."""
    keras.utils.set_random_seed(0)
    x, y = _problem()
    model = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu"), keras.layers.Dense(5),
    ])
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    return model


def _art_classifier(model):
    return TensorFlowV2Classifier(
        model=model, nb_classes=5, input_shape=(8, 8, 1), clip_values=(0.0, 1.0),
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def test_pgd_robust_accuracy_agrees_with_art_within_one_point():
    model = _trained_model()
    x_test, y_test = _problem(n=1000, seed=1)
    eps, step, steps = 0.1, 0.025, 10

    x_ours = core.pgd(lambda z: model(z, training=False), tf.constant(x_test), tf.constant(y_test, tf.int32), eps,
                      steps=steps, step_size=step, seed=tf.constant([1, 2]))
    ra_ours = float(np.mean(np.argmax(model.predict(x_ours, verbose=0), -1) == y_test))

    classifier = _art_classifier(model)
    pgd = ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=step, max_iter=steps,
                                   num_random_init=1, batch_size=1000, verbose=False)
    x_art = pgd.generate(x=x_test, y=np.eye(5)[y_test])
    ra_art = float(np.mean(np.argmax(model.predict(x_art, verbose=0), -1) == y_test))
    sa = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    assert sa > 0.9, sa
    assert 0.05 < ra_art < sa - 0.1, (sa, ra_art)  # the attack does something, not everything
    assert abs(ra_ours - ra_art) <= 0.01 + 1e-9, (ra_ours, ra_art)


@pytest.mark.parametrize("loss,art_loss", [("ce", "cross_entropy"), ("dlr", "difference_logits_ratio")])
def test_apgd_robust_accuracy_agrees_with_art(loss, art_loss):
    from art.attacks.evasion import AutoProjectedGradientDescent

    model = _trained_model()
    x_test, y_test = _problem(n=500, seed=1)
    eps, steps = 0.1, 30

    def logits_fn(z):
        return model(z, training=False)

    x_best, fooled = core.apgd(logits_fn, tf.constant(x_test), tf.constant(y_test, tf.int32), eps, steps=steps,
                               seed=tf.constant([1, 2]), loss=loss, return_fooled=True)
    correct = np.argmax(model.predict(x_test, verbose=0), -1) == y_test
    ours = correct & (np.argmax(model.predict(x_best.numpy(), verbose=0), -1) == y_test) & ~fooled.numpy()

    classifier = _art_classifier(model)
    attack = AutoProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps,
                                          nb_random_init=1, batch_size=500, loss_type=art_loss, verbose=False)
    x_art = attack.generate(x=x_test, y=np.eye(5)[y_test])
    theirs = correct & (np.argmax(model.predict(x_art, verbose=0), -1) == y_test)
    # Ours scores the batch (batch-statistics batch norm couples the examples) and counts a query
    # fooled at any iterate; ART bookkeeps per example. On a model without coupling they must agree.
    assert 0.05 < theirs.mean() < correct.mean() - 0.1, (correct.mean(), theirs.mean())
    assert abs(ours.mean() - theirs.mean()) <= 0.02, (ours.mean(), theirs.mean())
