"""A meta-batch split across two replicas gives the single-device meta-gradient and update.

The CPU is split into two logical devices (in a child process: device configuration
must happen before TensorFlow initialises).
"""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tf_rmaml.meta.learner import MetaConfig, MetaLearner
    from tf_rmaml.models.backbones import build_backbone

    rng = np.random.default_rng(0)
    batch = {
        "support_x": rng.uniform(size=(4, 6, 16, 16, 1)).astype("float32"),
        "support_y": np.tile(np.repeat(np.arange(3), 2), (4, 1)).astype("int32"),
        "query_x": rng.uniform(size=(4, 9, 16, 16, 1)).astype("float32"),
        "query_y": np.tile(np.repeat(np.arange(3), 3), (4, 1)).astype("int32"),
    }
    config = MetaConfig(inner_steps=2, inner_lr=0.1)

    def run(strategy):
        with strategy.scope():
            model = build_backbone("conv4", ways=3, input_shape=(16, 16, 1), filters=4, seed=5)
            opt = keras.optimizers.Adam(1e-2)
            opt.build(model.trainable_variables)
        learner = MetaLearner(model, config, opt, meta_batch=4, strategy=strategy)
        ds = tf.data.Dataset.from_tensors(batch)
        element = next(iter(strategy.experimental_distribute_dataset(ds)))
        grads, metrics, state = learner.compute(element)
        learner.apply(grads, state)
        return ([g.numpy() for g in grads], float(metrics["meta_loss"]),
                [v.numpy() for v in model.trainable_variables], [v.numpy() for v in model.non_trainable_variables])

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    g1, l1, w1, s1 = run(tf.distribute.get_strategy())
    g2, l2, w2, s2 = run(mirrored)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(w1 + s1, w2 + s2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    print("OK", l1, l2)
    """
)


def test_two_replicas_match_one_device():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.startswith("OK")
