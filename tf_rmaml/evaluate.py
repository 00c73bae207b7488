"""Meta-testing a trained run: restore, fine-tune on each test support set, score."""

import dataclasses
import json
import os
import time

import tensorflow as tf
from absl import logging

from tf_rmaml.attacks.checks import check_attacks, lowest_ra_of_checks, run_checks
from tf_rmaml.attacks.evaluation import perturb
from tf_rmaml.config import TrainConfig
from tf_rmaml.errors import ConfigError
from tf_rmaml.meta import inner_loop
from tf_rmaml.meta.evaluation import FineTuneEvaluator, load_outcomes, save_outcomes
from tf_rmaml.models.backbones import finetune_mask
from tf_rmaml.train import CHECKPOINT_SUBDIR, build_model, load_episodes, make_checkpoint


def restore_model(train_dir, checkpoint=None, config=None, input_shape=None):
    """Rebuilds a run's model and restores its weights.

    Returns `(model, config, checkpoint_step, checkpoint_path)`.
    """
    config = config or TrainConfig.load(train_dir)
    path = checkpoint or tf.train.latest_checkpoint(os.path.join(train_dir, CHECKPOINT_SUBDIR))
    if not path:
        raise FileNotFoundError(
            f"No checkpoint in {os.path.join(train_dir, CHECKPOINT_SUBDIR)}: train first "
            "(rmaml-train --train_dir=...) or pass --checkpoint=PATH."
        )
    model = build_model(config, input_shape)
    ckpt, step = make_checkpoint(model)
    # expect_partial: the optimizer's slots are in the file but not needed here.
    ckpt.restore(path).expect_partial().assert_existing_objects_matched()
    return model, config, int(step.numpy()), path


def evaluate_run(train_dir, *, checkpoint=None, num_tasks=1000, split="test", inner_steps_test=None,
                 eval_seed=None, queries=None, data_dir=None, cache_dir=None, jit_compile=False, attack=None,
                 eps_list=(), support_attack=None, attack_at="all", bn_mode="batch", checks=True, tasks_per_call=8,
                 finetune_test=None, surrogate_dir=None, partial_path=None, save_every_seconds=30.0, stop=None):
    """Standard (SA) and robust (RA) accuracy of a run on `num_tasks` fixed episodes of `split`.

    Args:
      attack: an `AttackConfig` (None or name "none": SA only).
      eps_list: other radii for the RA-vs-eps curve (same attack, after the last step).
      support_attack: an extra `AttackConfig` with target "support", reported as `support_attack`.
      attack_at: "all" (RA after every fine-tuning step) or "last".
      bn_mode: "batch" (batch statistics, the paper's protocol) or "running".
      checks: run the gradient-masking checks (see `tf_rmaml.attacks.checks`).
      surrogate_dir: another trained run on the same dataset and ways (independent of this one:
        another seed or method), the source of the transfer check; without it that check is
        reported as not run. An untrained surrogate would make it a second noise check.
      tasks_per_call: tasks per call of the compiled evaluation function (speed only).
      finetune_test: which layers adapt at meta-test ("all", "head", "last_block"); default: the run's.
      partial_path: where the per-task outcomes so far are saved (every `save_every_seconds`, and
        when an exception or interrupt stops the evaluation); if the file exists, the evaluation
        resumes after its tasks, provided it came from the same model and settings (else a
        ConfigError). The caller deletes it once the results are stored.
      stop: a `tf_rmaml.signals.StopRequest` (or anything with its `raise_if_requested`), checked
        after every compiled call: a requested stop saves the tasks done and raises `Interrupted`.

    Returns a JSON-ready dict with `sa`, `sa_ci95`, `num_tasks`, `checkpoint_step`,
    per-step accuracies, the evaluation settings and, with an attack, `ra`, `ra_ci95`,
    `ra_on_clean_correct`, the attack's description, `ra_vs_eps`, `checks` and
    `masking_suspected`; `sa_per_task` and `ra_per_task` for paired comparisons.
    """
    # Whether the checks would include a transfer attack, given a surrogate.
    transfer = bool(checks and attack is not None and "transfer" in check_attacks(attack, transfer=True))
    if surrogate_dir is not None and not transfer:
        raise ConfigError(
            f"--surrogate_dir={surrogate_dir} is used only by the transfer check of a query attack's masking checks, "
            "and none runs here (--nochecks, --attack=none or --attack_target=support): drop --surrogate_dir, or "
            "evaluate a query attack with the checks on.")
    config = TrainConfig.load(train_dir)
    overrides = {k: v for k, v in {"data_dir": data_dir, "cache_dir": cache_dir, "queries": queries}.items()
                 if v is not None}
    if overrides:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, **overrides))
    seed = config.eval_seed if eval_seed is None else eval_seed
    source = load_episodes(config, split, seed)
    model, config, step, path = restore_model(train_dir, checkpoint, config, source.image_shape)
    config = _with_finetune_test(config, finetune_test)
    steps = config.meta.inner_steps_test if inner_steps_test is None else inner_steps_test
    attacks, names = [], []
    if attack is not None and attack.name != "none":
        attacks.append(attack)
        names.append("main")
        extra = check_attacks(attack, transfer=surrogate_dir is not None) if checks else {}
        for name, cfg in extra.items():
            attacks.append(cfg)
            names.append(name)
        for e in eps_list:
            attacks.append(dataclasses.replace(attack, eps=float(e)))
            names.append(f"eps={float(e)}")
        if support_attack is not None:
            attacks.append(support_attack)
            names.append("support")
    surrogate, surrogate_finetune, surrogate_path = None, None, None
    if any(a.target == "transfer" for a in attacks):
        surrogate, surrogate_finetune, surrogate_path = _surrogate(surrogate_dir, train_dir, config, source.image_shape)
    evaluator = FineTuneEvaluator(
        model, steps=steps, lr=config.meta.inner_lr, mask=finetune_mask(model, config.meta.finetune_test),
        attacks=attacks, attack_at=attack_at, bn_mode=bn_mode, seed=seed, jit_compile=jit_compile,
        surrogate=surrogate, surrogate_finetune=surrogate_finetune, tasks_per_call=tasks_per_call,
    )
    # What produced the numbers: in the results, and (with what only a resume needs) in the partial file.
    fields = {
        "checkpoint_step": step, "split": split, "eval_seed": seed, "dataset": config.data.dataset,
        "ways": config.data.ways, "shots": config.data.shots, "queries": config.data.queries,
        "inner_steps_test": steps, "inner_lr": config.meta.inner_lr, "finetune_test": config.meta.finetune_test,
        "bn_mode": bn_mode, "surrogate": surrogate_path,
    }
    # XLA and the device change the rounding, so a resume on other ones would mix two evaluations.
    settings = {
        **fields, "checkpoint": os.path.realpath(path), "attack_at": attack_at,
        "attacks": [{"role": n, **a.describe()} for n, a in zip(names, attacks)],
        "jit_compile": bool(jit_compile), "device": "GPU" if tf.config.list_logical_devices("GPU") else "CPU",
    }
    done, seconds_before = _resume(partial_path, settings, num_tasks)
    resumed_at = len(done)
    start = time.perf_counter()
    logged, saved = [None, start], [resumed_at, start]  # (tasks, time) of the last log line and save

    def save():
        if partial_path is not None and len(done) > saved[0]:
            save_outcomes(partial_path, done, settings, seconds_before + time.perf_counter() - start)
            saved[:] = [len(done), time.perf_counter()]

    def progress(count):
        # The first call (tracing done), every 200 tasks or minute, and the last.
        now = time.perf_counter()
        if logged[0] is None or count - logged[0] >= 200 or now - logged[1] >= 60 or count == num_tasks:
            logged[:] = [count, now]
            rate = (count - resumed_at) / (now - start)
            logging.info("evaluated %d/%d tasks (%.2f tasks/s)", count, num_tasks, rate)
        if now - saved[1] >= save_every_seconds and count < num_tasks:
            save()
        if stop is not None:
            stop.raise_if_requested()

    try:
        results = evaluator.evaluate(source.dataset(resumed_at, num_tasks), progress=progress, done=done)
        # Every task done is on disk before anything else can fail or be interrupted; the caller
        # deletes the file once the results are stored.
        save()
    except BaseException:
        # Killed by a signal turned into an exception, or failed: what was done is kept.
        save()
        if partial_path is not None and done:
            logging.warning("Evaluation stopped after %d/%d tasks; they are saved in %s and the same command "
                            "resumes from there.", len(done), num_tasks, partial_path)
        raise
    results.update(fields, checkpoint=path, seconds=seconds_before + time.perf_counter() - start,
                   resumed_at_task=resumed_at)
    if attacks:
        by_name = dict(zip(names, results.pop("attacks")))
        results["ra_vs_eps"] = sorted(
            [{"eps": e["eps"], "eps_255": e["eps_255"], "ra": e["ra"], "ra_ci95": e["ra_ci95"]}
             for n, e in by_name.items() if n == "main" or n.startswith("eps=")],
            key=lambda r: r["eps"],
        )
        if "support" in by_name:
            results["support_attack"] = _without_per_task(by_name["support"])
        if checks:
            measured = [n for n in ("eps0", "noise", "stronger", "transfer") if n in by_name]
            checks_ra = {n: by_name[n]["ra_per_task"] for n in measured}
            curve = [(e["eps"], e["ra_per_task"]) for n, e in by_name.items() if n.startswith("eps=")]
            skipped = {}
            if transfer and "transfer" not in checks_ra:
                skipped["transfer_does_not_beat_white_box"] = (
                    "no trained surrogate (pass --surrogate_dir=<another run on the same dataset>)")
            results["checks"], results["masking_suspected"] = run_checks(
                results["sa"], results["ra_per_task"], attack.eps, checks_ra, curve, skipped)
            results["check_attacks"] = {n: _without_per_task(by_name[n]) for n in measured}
            lowest = lowest_ra_of_checks(results["ra_per_task"], checks_ra)
            if lowest is not None:
                results["ra_lowest_of_checks"] = dict(zip(("ra", "ra_ci95", "roles"), lowest))
            for name, check in results["checks"].items():
                if check["passed"] is False:
                    logging.warning("Robustness check failed (%s): %s. Gradient masking or a weak attack "
                                    "is suspected; do not trust this RA.", name, check["detail"])
    return results


def _resume(partial_path, settings, num_tasks):
    """`(done, seconds)` of an interrupted evaluation saved at `partial_path` (nothing: `([], 0)`)."""
    if partial_path is None or not os.path.exists(partial_path):
        return [], 0.0
    try:
        done, saved, seconds = load_outcomes(partial_path)
    except Exception as e:  # a truncated or foreign file
        raise ConfigError(f"{partial_path} is not a readable partial evaluation ({type(e).__name__}: {e}); "
                          "delete it (or pass --noresume) to start the evaluation over.") from e
    settings = json.loads(json.dumps(settings))  # as saved: tuples are lists
    differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differ:
        def attacks(entries):
            return ", ".join(f"{a['role']}: {a['attack']} eps {a['eps_255']:.3g}/255 {a['steps']} steps "
                             f"{a['restarts']} restarts" for a in entries or ())
        shown = "; ".join(f"attacks: saved [{attacks(saved.get(k))}], now [{attacks(settings.get(k))}]"
                          if k == "attacks" else f"{k}: saved {saved.get(k)!r}, now {settings.get(k)!r}"
                          for k in differ)
        raise ConfigError(
            f"{partial_path} holds {len(done)} tasks of an interrupted evaluation with other settings ({shown}). "
            "Rerun the command that started it to resume, or pass --noresume (or delete the file) to start over.")
    logging.info("Resuming the evaluation saved in %s: %d of %d tasks done.", partial_path, min(len(done), num_tasks),
                 num_tasks)
    return done[:num_tasks], seconds


def _without_per_task(entry):
    return {k: v for k, v in entry.items() if k != "ra_per_task"}


def _surrogate(surrogate_dir, train_dir, config, image_shape):
    """The trained surrogate of the transfer check, its `(steps, lr, mask)` of fine-tuning and the
    path of the checkpoint restored (its latest: a run still training moves it)."""
    if surrogate_dir is None:
        raise ConfigError("A transfer attack needs a trained surrogate: pass --surrogate_dir=<another run>.")
    if os.path.realpath(surrogate_dir) == os.path.realpath(train_dir):
        raise ConfigError(f"--surrogate_dir={surrogate_dir} is the evaluated run itself; a transfer check needs "
                          "an independently trained run (another seed or method) on the same dataset.")
    other = TrainConfig.load(surrogate_dir)
    if (other.data.dataset, other.data.ways) != (config.data.dataset, config.data.ways):
        raise ConfigError(
            f"--surrogate_dir={surrogate_dir} was trained on {other.data.dataset} {other.data.ways}-way, the evaluated "
            f"run on {config.data.dataset} {config.data.ways}-way: the surrogate must see the same images and classes.")
    model, other, _, path = restore_model(surrogate_dir, input_shape=image_shape)
    steps_lr_mask = (other.meta.inner_steps_test, other.meta.inner_lr, finetune_mask(model, other.meta.finetune_test))
    return model, steps_lr_mask, os.path.realpath(path)


def _with_finetune_test(config, finetune_test):
    if finetune_test is None:
        return config
    return dataclasses.replace(config, meta=dataclasses.replace(config.meta, finetune_test=finetune_test))


def attack_examples(train_dir, attack, *, split="test", eval_seed=None, queries=None, bn_mode="batch", count=4,
                    inner_steps_test=None, finetune_test=None):
    """Clean, adversarial and perturbation images of the first `count` queries of the first task
    (after clean fine-tuning; the first run of `attack`), for TensorBoard.

    Returns three float arrays `[count, H, W, C]` in [0, 1]; the perturbation is mapped as
    0.5 + delta / (2 eps) (gray = unchanged).
    """
    config = TrainConfig.load(train_dir)
    if queries is not None:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, queries=queries))
    source = load_episodes(config, split, config.eval_seed if eval_seed is None else eval_seed)
    model, config, _, _ = restore_model(train_dir, config=config, input_shape=source.image_shape)
    config = _with_finetune_test(config, finetune_test)
    task = source.episode(0)
    training = bn_mode == "batch"
    params = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    fast, state, _ = inner_loop.adapt(
        model, params, state, task["support_x"], task["support_y"],
        steps=config.meta.inner_steps_test if inner_steps_test is None else inner_steps_test,
        lr=config.meta.inner_lr, mask=finetune_mask(model, config.meta.finetune_test), first_order=True,
        training=training,
    )

    def logits_fn(x):
        return inner_loop.forward(model, fast, state, x, training=training)[0]

    x_adv = perturb(logits_fn, task["query_x"], task["query_y"], attack, attack.runs()[0],
                    tf.constant([0, 77], tf.int64))
    clean, adv = task["query_x"][:count].numpy(), x_adv[:count].numpy()
    return clean, adv, 0.5 + (adv - clean) / (2 * max(attack.eps, 1e-12))
