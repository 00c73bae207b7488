"""rmaml-visualize: activation maps (activation maximisation) and saliency of meta-models.

Example:
  rmaml-visualize --train_dir=runs/omniglot_maml --compare_dir=runs/omniglot_rmaml --out=runs/vis
For each run, two panels: the meta-model, and the model fine-tuned on test task --task_index
(clean support, the run's fine-tuning steps). Writes activation_maps.png (per panel three rows:
seed, result, perturbation; one column per unit), saliency.png, visualize.json, and the same
images to TensorBoard under <out>/tensorboard.
"""

import json
import os

from absl import app, flags, logging

from tf_rmaml.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("train_dir", None, "A run made by rmaml-train.")
flags.DEFINE_string("compare_dir", None, "A second run to draw beside it (e.g. standard vs robust).")
flags.DEFINE_string("out", None, "Output directory.")
flags.DEFINE_list("units", [], "Feature units to maximise (default: the paper's 200..700 if the feature is that "
                  "large, else 6 evenly spaced units).")
flags.DEFINE_integer("steps", 1000, "Gradient-ascent steps (the paper: 1000).")
flags.DEFINE_float("step_size", 0.1, "Gradient-ascent step (the paper: 0.1).")
flags.DEFINE_integer("task_index", 0, "Test task whose support set the fine-tuned panel adapts to.")
flags.DEFINE_integer("saliency_images", 5, "Query images of that task to draw saliency maps for.")
flags.DEFINE_enum("bn_mode", "running", ("running", "batch"),
                  "Batch norm during activation maximisation (see tf_rmaml/visualize.py).")
flags.mark_flag_as_required("train_dir")
flags.mark_flag_as_required("out")

PAPER_UNITS = (200, 300, 400, 500, 600, 700)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import numpy as np
    import tensorflow as tf

    from tf_rmaml import visualize as vis
    from tf_rmaml.config import TrainConfig
    from tf_rmaml.errors import ConfigError
    from tf_rmaml.evaluate import restore_model
    from tf_rmaml.models.backbones import finetune_mask
    from tf_rmaml.train import load_episodes

    if FLAGS.steps < 1 or not FLAGS.step_size > 0:
        raise ConfigError(f"--steps must be >= 1 and --step_size > 0, got {FLAGS.steps} and {FLAGS.step_size}.")
    try:
        units = [int(u) for u in FLAGS.units]
    except ValueError:
        raise ConfigError(f"--units must be integers separated by commas, got {','.join(FLAGS.units)!r}.")
    panels, saliency_rows, names, task = [], [], [], None
    for index, train_dir in enumerate([FLAGS.train_dir] + ([FLAGS.compare_dir] if FLAGS.compare_dir else [])):
        config = TrainConfig.load(train_dir)
        source = load_episodes(config, "test", config.eval_seed)
        model, config, step, _ = restore_model(train_dir, config=config, input_shape=source.image_shape)
        if task is None:
            task = source.episode(FLAGS.task_index)
        size = vis.feature_size(model)
        if not units:
            units = list(PAPER_UNITS) if size > max(PAPER_UNITS) else [int(u) for u in np.linspace(0, size - 1, 6)]
        name = f"[{index + 1}] {os.path.basename(os.path.normpath(train_dir))} ({config.robust.method}, step {step})"
        meta = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables])
        tuned = vis.fine_tune(model, task, steps=config.meta.inner_steps_test, lr=config.meta.inner_lr,
                              mask=finetune_mask(model, config.meta.finetune_test))
        panels += [(f"{name}: meta-model", model, *meta), (f"{name}: fine-tuned on test task {FLAGS.task_index}",
                                                           model, *tuned)]
        k = FLAGS.saliency_images
        saliency_rows.append(list(vis.saliency(model, *tuned, task["query_x"], task["query_y"])[:k]))
        names.append(name)
    results = vis.visualize(panels, tuple(task["query_x"].shape[1:]), units, steps=FLAGS.steps,
                            step_size=FLAGS.step_size, bn_mode=FLAGS.bn_mode)
    os.makedirs(FLAGS.out, exist_ok=True)
    maps = vis.grid(vis.activation_rows(results))
    k = FLAGS.saliency_images
    sal = vis.grid([list(task["query_x"].numpy()[:k])] + saliency_rows)
    vis.save_png(maps, os.path.join(FLAGS.out, "activation_maps.png"))
    vis.save_png(sal, os.path.join(FLAGS.out, "saliency.png"))
    with open(os.path.join(FLAGS.out, "visualize.json"), "w") as f:
        json.dump({
            "units": units, "steps": FLAGS.steps, "step_size": FLAGS.step_size, "bn_mode": FLAGS.bn_mode,
            "task_index": FLAGS.task_index,
            "rows": "per panel: seed, result, |result - seed| (scaled); saliency.png: query images, then one row per run "
                    "(fine-tuned model)",
            "panels": {name: [{"unit": u, "activation_before": a[0], "activation_after": a[1]}
                              for u, (_, _, a) in zip(units, per_unit)] for name, per_unit in results.items()},
            "saliency_runs": names,
        }, f, indent=2)
    with tf.summary.create_file_writer(os.path.join(FLAGS.out, "tensorboard")).as_default(step=0):
        tf.summary.image("activation_maps", maps[None])
        tf.summary.image("saliency", sal[None])
    for name, per_unit in results.items():
        logging.info("%s: unit activation %s", name,
                     ", ".join(f"{u}: {a[0]:.2f} -> {a[1]:.2f}" for u, (_, _, a) in zip(units, per_unit)))
    logging.info("Wrote %s", FLAGS.out)


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
