"""SavedModel export of a meta-model that can still adapt: fine-tuning runs inside the graph.

The exported module holds the meta-weights and batch-norm state as plain `tf.Variable`s and three
concrete functions, so `tf.saved_model.load(path)` works in a process that never imports
`tf_rmaml` (or Keras):

| signature | inputs | outputs |
|---|---|---|
| `serving_default` | `images` [B, H, W, C] float32 in [0, 1] | `logits` [B, ways] (the Keras model, inference mode) |
| `adapt_and_predict` | `support_images`, `support_labels` (int32), `query_images` | `probabilities` [Q, ways], `logits` |
| `embed` | `images` | `features` [B, D] (the flattened backbone output) |

`adapt_and_predict` runs `steps` SGD steps at `lr` on the support set (first order: nothing
differentiates through meta-testing), updating only the tensors the fine-tune mask selects, with
batch norm in the mode the run was evaluated with (`bn_mode`: "batch", the paper's protocol and
rmaml-eval's default, or "running") -- exactly `rmaml-eval`'s fine-tuning.
"""

import json
import os
import shutil

import tensorflow as tf

from tf_rmaml.errors import ConfigError
from tf_rmaml.meta import inner_loop
from tf_rmaml.models.backbones import feature_model


class AdaptiveModel(tf.Module):
    """A meta-model with its fine-tuning procedure, ready for `tf.saved_model.save`."""

    def __init__(self, model, *, steps, lr, mask, bn_mode="batch"):
        super().__init__(name="adaptive_model")
        if bn_mode not in ("batch", "running"):
            raise ConfigError(f"bn_mode must be batch or running, got {bn_mode!r}.")
        image_shape = tuple(model.inputs[0].shape[1:])
        self.params = [tf.Variable(v.numpy(), name=v.path.replace("/", "_")) for v in model.trainable_variables]
        self.state = [tf.Variable(v.numpy(), trainable=False, name=v.path.replace("/", "_"))
                      for v in model.non_trainable_variables]
        features = feature_model(model)
        wanted = {id(v) for v in features.trainable_variables}
        feature_index = [i for i, v in enumerate(model.trainable_variables) if id(v) in wanted]
        training = bn_mode == "batch"
        images = tf.TensorSpec([None, *image_shape], tf.float32, name="images")

        def serving(images):
            logits, _ = inner_loop.forward(model, self.params, self.state, images, training=False)
            return {"logits": logits}

        def embed(images):
            params = [self.params[i] for i in feature_index]
            return {"features": features.stateless_call(params, list(self.state), images, training=False)[0]}

        def adapt_and_predict(support_images, support_labels, query_images):
            fast, state, _ = inner_loop.adapt(
                model, [tf.convert_to_tensor(p) for p in self.params], [tf.convert_to_tensor(s) for s in self.state],
                support_images, support_labels, steps=steps, lr=lr, mask=mask, first_order=True, training=training,
            )
            logits, _ = inner_loop.forward(model, fast, state, query_images, training=training)
            return {"probabilities": tf.nn.softmax(logits), "logits": logits}

        self.serving_default = tf.function(serving, input_signature=[images])
        self.embed = tf.function(embed, input_signature=[images])
        self.adapt_and_predict = tf.function(adapt_and_predict, input_signature=[
            tf.TensorSpec([None, *image_shape], tf.float32, name="support_images"),
            tf.TensorSpec([None], tf.int32, name="support_labels"),
            tf.TensorSpec([None, *image_shape], tf.float32, name="query_images"),
        ])


def export(model, export_dir, *, version, steps, lr, mask, bn_mode="batch", overwrite=False, metadata=None):
    """Writes `<export_dir>/<version>/` (a SavedModel), `<export_dir>/model.keras` and
    `<export_dir>/export.json`; returns the SavedModel path.

    Refuses an existing `export_dir` unless `overwrite`.
    """
    if os.path.exists(export_dir):
        if not overwrite:
            raise ConfigError(f"--export_dir={export_dir} exists; choose a new one or pass --overwrite to replace it.")
        shutil.rmtree(export_dir)
    module = AdaptiveModel(model, steps=steps, lr=lr, mask=mask, bn_mode=bn_mode)
    tmp = export_dir.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    saved = os.path.join(tmp, str(int(version)))
    tf.saved_model.save(module, saved, signatures={
        "serving_default": module.serving_default,
        "adapt_and_predict": module.adapt_and_predict,
        "embed": module.embed,
    })
    model.save(os.path.join(tmp, "model.keras"))
    with open(os.path.join(tmp, "export.json"), "w") as f:
        json.dump({"version": int(version), "inner_steps_test": steps, "inner_lr": lr, "bn_mode": bn_mode,
                   "finetune_mask": list(mask), **(metadata or {})}, f, indent=2)
    # Appears whole or not at all.
    os.replace(tmp, export_dir)
    return os.path.join(export_dir, str(int(version)))
