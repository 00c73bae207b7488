"""rmaml-train: meta-train (or resume) a run.

Example:
  rmaml-train --flagfile=flags/omniglot_maml_5w1s_cpu.flags --train_dir=runs/omniglot
Running the same command again resumes from the latest checkpoint in --train_dir.
"""

import os

from absl import app, flags, logging

from tf_rmaml.cli import common
from tf_rmaml.signals import Interrupted, exit_code

FLAGS = flags.FLAGS
common.define_train_flags()
flags.DEFINE_string("train_dir", None, "Directory of the run: config, checkpoints, TensorBoard logs.")
flags.mark_flag_as_required("train_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf

    from tf_rmaml.train import train

    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    config = common.train_config_from_flags()
    os.makedirs(FLAGS.train_dir, exist_ok=True)
    FLAGS.append_flags_into_file(os.path.join(FLAGS.train_dir, "flags.txt"))
    try:
        results = train(config, FLAGS.train_dir, strategy=common.make_strategy(FLAGS.strategy))
    except Interrupted as interrupted:  # a second signal: stopped at once, the last checkpoint kept
        raise SystemExit(interrupted.exit_code) from None
    if "stopped_by" in results:
        raise SystemExit(exit_code(results["stopped_by"]))
    if "val" in results:
        logging.info("Final meta-validation SA: %.2f%% +- %.2f%%", 100 * results["val"]["sa"], 100 * results["val"]["sa_ci95"])


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
