"""Activation maximisation and saliency: the unit's activation rises, images stay in [0, 1], the
fine-tuned panel really uses fine-tuned weights; the command line end to end."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from test_train_cli import _cli, needs_data

from tf_rmaml import visualize as vis
from tf_rmaml.errors import ConfigError
from tf_rmaml.models.backbones import build_backbone, finetune_mask


def _model_and_task():
    model = build_backbone("conv4", ways=3, input_shape=(32, 32, 1), filters=4, seed=1)
    rng = np.random.default_rng(0)
    task = {"support_x": tf.constant(rng.uniform(size=(3, 32, 32, 1)), tf.float32), "support_y": tf.range(3),
            "query_x": tf.constant(rng.uniform(size=(6, 32, 32, 1)), tf.float32), "query_y": tf.range(6) % 3}
    return model, task


def test_activation_rises_stays_in_the_box_and_fine_tuned_weights_differ():
    model, task = _model_and_task()
    meta = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
    tuned = vis.fine_tune(model, task, steps=3, lr=0.1, mask=finetune_mask(model))
    assert any(not np.allclose(a, b) for a, b in zip(meta[0], tuned[0]))
    panels = [("meta", model, *meta), ("tuned", model, *tuned)]
    units = list(range(8))
    results = vis.visualize(panels, (32, 32, 1), units, steps=30, step_size=0.1)
    for name, per_unit in results.items():
        live = 0
        for x0, xs, (before, after) in per_unit:
            # A unit that is active at the seed rises; a dead ReLU unit (no gradient) stays put.
            assert after > before if before > 0 else after >= before, (name, before, after)
            live += before > 0
            assert xs.min() >= 0 and xs.max() <= 1 and np.allclose(x0, 0.2, atol=1e-5)
        assert live >= 2, name
    # The two panels differ because their weights do (same seed image, same units).
    assert any(not np.allclose(a[1], b[1]) for a, b in zip(results["meta"], results["tuned"]))
    maps = vis.grid(vis.activation_rows(results))
    assert maps.min() >= 0 and maps.max() <= 1 and maps.shape[-1] == 3
    sal = vis.saliency(model, *tuned, task["query_x"], task["query_y"])
    assert sal.shape == (6, 32, 32) and np.allclose(sal.reshape(6, -1).max(1), 1.0)


def test_unit_outside_the_feature_is_a_clear_error():
    model, _ = _model_and_task()
    meta = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
    with pytest.raises(ConfigError, match="outside the feature"):
        vis.visualize([("meta", model, *meta)], (32, 32, 1), [vis.feature_size(model)], steps=1)


@needs_data
def test_visualize_command_line(smoke_run, tmp_path):
    train_dir = smoke_run
    out = tmp_path / "vis"
    _cli("visualize", f"--train_dir={train_dir}", f"--compare_dir={train_dir}", f"--out={out}", "--steps=20",
         "--units=1,5")
    for name in ("activation_maps.png", "saliency.png", "visualize.json"):
        assert (out / name).exists(), name
    with open(out / "visualize.json") as f:
        report = json.load(f)
    assert len(report["panels"]) == 4 and report["units"] == [1, 5]
    assert os.listdir(out / "tensorboard")
    proc = _cli("visualize", f"--train_dir={train_dir}", f"--out={out}", "--units=100000", check=False)
    assert proc.returncode != 0 and "outside the feature" in proc.stderr and "Traceback" not in proc.stderr
