"""rmaml-eval: meta-test a trained run on fixed test episodes.

Example:
  rmaml-eval --train_dir=runs/omniglot --num_tasks=2400 --output_json=runs/omniglot/test.json
Each task fine-tunes the meta-weights on its clean support set (--inner_steps_test
steps of the run's config unless overridden) and scores the query set.
"""

import dataclasses
import json
import os

from absl import app, flags, logging

from tf_rmaml.attacks.checks import checks_status
from tf_rmaml.attacks.evaluation import ATTACKS, AttackConfig
from tf_rmaml.attacks.summary import EVAL_EPS_255, attack_summary
from tf_rmaml.cli import common
from tf_rmaml.errors import ConfigError
from tf_rmaml.models.backbones import FINETUNE_MODES
from tf_rmaml.plots import plot_evaluation
from tf_rmaml.signals import Interrupted, StopRequest

FLAGS = flags.FLAGS
flags.DEFINE_string("train_dir", None, "Directory of a run made by rmaml-train.")
flags.DEFINE_string("checkpoint", None, "Checkpoint path (default: the latest in --train_dir).")
flags.DEFINE_integer("num_tasks", 1000, "Test tasks to evaluate.")
flags.DEFINE_enum("split", "test", ("train", "val", "test"), "Split to draw the tasks from.")
flags.DEFINE_string("output_json", None, "Write the results here (default: <train_dir>/eval_<split>.json).")
flags.DEFINE_integer("inner_steps_test", None, "Override the run's fine-tuning steps.")
flags.DEFINE_integer("eval_seed", None, "Override the run's episode seed for evaluation.")
flags.DEFINE_integer("queries", None, "Override the run's query images per class (15 is the usual test protocol).")
flags.DEFINE_string("data_dir", None, "Override the run's data folder.")
flags.DEFINE_string("cache_dir", None, "Override the run's cache folder.")
flags.DEFINE_bool("jit_compile", None, "Compile with XLA (default: on with a GPU).")
flags.DEFINE_enum("attack", "pgd", ATTACKS, "Attack on the query set after clean fine-tuning "
                  "(strong: worst case over PGD with restarts, APGD-CE and APGD-DLR).")
flags.DEFINE_float("eps", None, "L-inf radius in [0, 1] pixel units (default: 10/255 Omniglot, 8/255 CIFAR-FS, 2/255 MiniImageNet).")
flags.DEFINE_float("eps_255", None, "The radius in 1/255 units (alternative to --eps).")
flags.DEFINE_integer("attack_steps", 10, "Attack iterations.")
flags.DEFINE_float("attack_step_size", 2 / 255, "Attack step size in pixel units (the paper: 2/255).")
flags.DEFINE_integer("attack_restarts", 1, "Random restarts; a query counts as robust only if it survives all.")
flags.DEFINE_list("eps_list", [], "Comma list of radii (pixel units) for the RA-vs-eps curve.")
flags.DEFINE_enum("bn_mode", "batch", ("batch", "running"),
                  "batch: statistics of the evaluated batch (the paper's code); running: stored statistics.")
flags.DEFINE_enum("attack_at", "all", ("all", "last"), "Measure RA after every fine-tuning step, or only the last.")
flags.DEFINE_enum("attack_target", "query", ("query", "support", "both"),
                  "query: attack the query set after clean fine-tuning (the paper); support: perturb the support set "
                  "before fine-tuning, through the unrolled fine-tuning; both: report the two.")
flags.DEFINE_integer("tasks_per_call", 8, "Tasks evaluated together in one compiled call (speed only; "
                     "results do not depend on it).")
flags.DEFINE_enum("finetune_test", None, FINETUNE_MODES,
                  "Which layers adapt at meta-test (default: the run's --finetune_test), e.g. head to measure "
                  "light fine-tuning of a model meta-trained with full fine-tuning.")
flags.DEFINE_enum("attack_norm", "linf", ("linf", "l2"), "Threat model: L-inf ball, or L2 (PGD and noise only).")
flags.DEFINE_bool("checks", True, "Run the gradient-masking checks (extra attacks).")
flags.DEFINE_string("surrogate_dir", None, "Another trained run on the same dataset (another seed or method): "
                    "the source of the checks' transfer attack. Without it the transfer check is not run.")
flags.DEFINE_bool("resume", True, "Continue an interrupted evaluation from <output_json>.partial.npz (saved every "
                  "30 s and when stopped; it must come from the same model and flags). --noresume starts over.")
flags.mark_flag_as_required("train_dir")


def attack_from_flags(dataset):
    if FLAGS.eps is not None and FLAGS.eps_255 is not None:
        raise ConfigError("Give --eps or --eps_255, not both.")
    if FLAGS.eps_255 is not None:
        eps = FLAGS.eps_255 / 255
    elif FLAGS.eps is not None:
        eps = FLAGS.eps
    else:
        eps = EVAL_EPS_255[dataset] / 255
    eps_list = []
    for item in FLAGS.eps_list:
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--eps_list must be numbers in [0, 1] separated by commas; {item!r} is not a number.")
        if not 0 <= value <= 1:
            raise ConfigError(f"--eps_list values must be in [0, 1] (pixel units), got {value}.")
        eps_list.append(value)
    target = "support" if FLAGS.attack_target == "support" else "query"
    attack = AttackConfig(FLAGS.attack, eps=eps, steps=FLAGS.attack_steps, step_size=FLAGS.attack_step_size,
                          restarts=FLAGS.attack_restarts, norm=FLAGS.attack_norm, target=target)
    support = dataclasses.replace(attack, target="support") if FLAGS.attack_target == "both" else None
    return attack, eps_list, support


def write_summaries(results, logdir):
    """The evaluation's numbers as TensorBoard scalars (step = the checkpoint's step)."""
    import tensorflow as tf

    with tf.summary.create_file_writer(logdir).as_default(step=results["checkpoint_step"]):
        tf.summary.scalar("sa", results["sa"])
        tf.summary.scalar("sa_ci95", results["sa_ci95"])
        if "ra" in results:
            tf.summary.scalar("ra", results["ra"])
            tf.summary.scalar("ra_ci95", results["ra_ci95"])
            tf.summary.scalar("ra_on_clean_correct", results["ra_on_clean_correct"])
            for point in results["ra_vs_eps"]:
                tf.summary.scalar(f"ra_vs_eps/eps_{point['eps_255']:.1f}_255", point["ra"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from tf_rmaml.config import TrainConfig
    from tf_rmaml.evaluate import evaluate_run

    if FLAGS.num_tasks < 1:
        raise ConfigError(f"--num_tasks must be >= 1, got {FLAGS.num_tasks}.")
    if FLAGS.tasks_per_call < 1:
        raise ConfigError(f"--tasks_per_call must be >= 1, got {FLAGS.tasks_per_call}.")
    attack, eps_list, support_attack = attack_from_flags(TrainConfig.load(FLAGS.train_dir).data.dataset)
    out = FLAGS.output_json or os.path.join(FLAGS.train_dir, f"eval_{FLAGS.split}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    partial = out + ".partial.npz"
    if not FLAGS.resume and os.path.exists(partial):
        logging.info("--noresume: starting over; removing %s.", partial)
        os.remove(partial)
    with StopRequest("%s: stopping after the current call, saving the tasks done (send it again to stop at "
                     "once).") as stop:
        try:
            results = evaluate_run(
                FLAGS.train_dir, checkpoint=FLAGS.checkpoint, num_tasks=FLAGS.num_tasks, split=FLAGS.split,
                inner_steps_test=FLAGS.inner_steps_test, eval_seed=FLAGS.eval_seed, queries=FLAGS.queries,
                data_dir=FLAGS.data_dir, cache_dir=FLAGS.cache_dir, jit_compile=common.resolve_jit_compile(FLAGS.jit_compile),
                attack=attack, eps_list=eps_list, support_attack=support_attack, attack_at=FLAGS.attack_at,
                bn_mode=FLAGS.bn_mode, checks=FLAGS.checks, tasks_per_call=FLAGS.tasks_per_call,
                finetune_test=FLAGS.finetune_test, surrogate_dir=FLAGS.surrogate_dir, partial_path=partial,
                stop=stop,
            )
        except Interrupted as interrupted:
            raise SystemExit(interrupted.exit_code) from None
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, out)
    if os.path.exists(partial):
        os.remove(partial)
    _report(results, attack, out)


def _report(results, attack, out):
    """Plot, TensorBoard summaries and examples, and the log lines of a finished evaluation."""
    png = plot_evaluation(results, os.path.splitext(out)[0] + ".png")
    logdir = os.path.join(FLAGS.train_dir, f"eval_{FLAGS.split}")
    write_summaries(results, logdir)
    if "ra" in results and attack.target == "query":
        import tensorflow as tf

        from tf_rmaml.evaluate import attack_examples

        clean, adv, delta = attack_examples(
            FLAGS.train_dir, attack, split=FLAGS.split, eval_seed=FLAGS.eval_seed, queries=FLAGS.queries,
            bn_mode=FLAGS.bn_mode, inner_steps_test=FLAGS.inner_steps_test,
            finetune_test=FLAGS.finetune_test)
        with tf.summary.create_file_writer(logdir).as_default(step=results["checkpoint_step"]):
            tf.summary.image("examples/clean", clean, max_outputs=len(clean))
            tf.summary.image("examples/adversarial", adv, max_outputs=len(adv))
            tf.summary.image("examples/perturbation", delta, max_outputs=len(delta),
                             description="0.5 + delta / (2 eps): gray is unchanged")
    logging.info(
        "SA %.2f%% +- %.2f%% over %d %s tasks (checkpoint step %d) -> %s",
        100 * results["sa"], 100 * results["sa_ci95"], results["num_tasks"], FLAGS.split, results["checkpoint_step"], out,
    )
    if png:
        logging.info("Plot: %s", png)
    if "ra" in results:
        logging.info(
            "RA %.2f%% +- %.2f%% under %s, bn_mode=%s%s",
            100 * results["ra"], 100 * results["ra_ci95"], attack_summary(results["attack"], results["num_tasks"]),
            results["bn_mode"],
            f"  [{checks_status(results)}]",
        )


def run():
    common.run_main(main)


if __name__ == "__main__":
    run()
