"""rmaml-export: a trained run as a SavedModel that adapts (see `tf_rmaml.export`).

Example:
  rmaml-export --train_dir=runs/omniglot --export_dir=exports/omniglot
  # then, anywhere TensorFlow is installed:
  m = tf.saved_model.load("exports/omniglot/13000")
  probs = m.signatures["adapt_and_predict"](support_images=..., support_labels=..., query_images=...)
"""

from absl import app, flags, logging

from tf_rmaml.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("train_dir", None, "Directory of a run made by rmaml-train.")
flags.DEFINE_string("checkpoint", None, "Checkpoint path (default: the latest in --train_dir).")
flags.DEFINE_string("export_dir", None, "Output directory; the SavedModel goes to <export_dir>/<checkpoint step>/.")
flags.DEFINE_bool("overwrite", False, "Replace an existing --export_dir.")
flags.DEFINE_enum("bn_mode", "batch", ("batch", "running"),
                  "Batch norm in adapt_and_predict: batch statistics (the paper's protocol, rmaml-eval's default) or "
                  "the stored moving statistics.")
flags.mark_flag_as_required("train_dir")
flags.mark_flag_as_required("export_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from tf_rmaml.config import TrainConfig
    from tf_rmaml.data.sources import image_shape
    from tf_rmaml.evaluate import restore_model
    from tf_rmaml.export import export
    from tf_rmaml.models.backbones import finetune_mask

    config = TrainConfig.load(FLAGS.train_dir)
    shape = image_shape(config.data.dataset, config.data.image_size)
    model, config, step, path = restore_model(FLAGS.train_dir, FLAGS.checkpoint, config, shape)
    out = export(
        model, FLAGS.export_dir, version=step, steps=config.meta.inner_steps_test, lr=config.meta.inner_lr,
        mask=finetune_mask(model, config.meta.finetune_test), bn_mode=FLAGS.bn_mode, overwrite=FLAGS.overwrite,
        metadata={"checkpoint": path, "dataset": config.data.dataset, "ways": config.data.ways,
                  "method": config.robust.method},
    )
    logging.info("Exported %s (step %d) to %s", path, step, out)


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
