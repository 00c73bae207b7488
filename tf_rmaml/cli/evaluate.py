"""rmaml-eval: meta-test a trained run on fixed test episodes.

Example:
  rmaml-eval --train_dir=runs/omniglot --num_tasks=2400 --output_json=runs/omniglot/test.json
Each task fine-tunes the meta-weights on its clean support set (--inner_steps_test
steps of the run's config unless overridden) and scores the query set.
"""

import json
import os

from absl import app, flags, logging

from tf_rmaml.cli import common

FLAGS = flags.FLAGS
flags.DEFINE_string("train_dir", None, "Directory of a run made by rmaml-train.")
flags.DEFINE_string("checkpoint", None, "Checkpoint path (default: the latest in --train_dir).")
flags.DEFINE_integer("num_tasks", 1000, "Test tasks to evaluate.")
flags.DEFINE_enum("split", "test", ("train", "val", "test"), "Split to draw the tasks from.")
flags.DEFINE_string("output_json", None, "Write the results here (default: <train_dir>/eval_<split>.json).")
flags.DEFINE_integer("inner_steps_test", None, "Override the run's fine-tuning steps.")
flags.DEFINE_integer("eval_seed", None, "Override the run's episode seed for evaluation.")
flags.DEFINE_string("data_dir", None, "Override the run's data folder.")
flags.DEFINE_string("cache_dir", None, "Override the run's cache folder.")
flags.DEFINE_bool("jit_compile", None, "Compile with XLA (default: on with a GPU).")
flags.mark_flag_as_required("train_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from tf_rmaml.evaluate import evaluate_run

    if FLAGS.num_tasks < 1:
        raise app.UsageError(f"--num_tasks must be >= 1, got {FLAGS.num_tasks}.")
    results = evaluate_run(
        FLAGS.train_dir, checkpoint=FLAGS.checkpoint, num_tasks=FLAGS.num_tasks, split=FLAGS.split,
        inner_steps_test=FLAGS.inner_steps_test, eval_seed=FLAGS.eval_seed, data_dir=FLAGS.data_dir,
        cache_dir=FLAGS.cache_dir, jit_compile=common.resolve_jit_compile(FLAGS.jit_compile),
    )
    out = FLAGS.output_json or os.path.join(FLAGS.train_dir, f"eval_{FLAGS.split}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, out)
    logging.info(
        "SA %.2f%% +- %.2f%% over %d %s tasks (checkpoint step %d) -> %s",
        100 * results["sa"], 100 * results["sa_ci95"], results["num_tasks"], FLAGS.split, results["checkpoint_step"], out,
    )


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
