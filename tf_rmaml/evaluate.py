"""Meta-testing a trained run: restore, fine-tune on each test support set, score."""

import dataclasses
import os
import time

import tensorflow as tf
from absl import logging

from tf_rmaml.config import TrainConfig
from tf_rmaml.meta.evaluation import FineTuneEvaluator
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
                 eval_seed=None, data_dir=None, cache_dir=None, jit_compile=False):
    """Standard accuracy (SA) of a run on `num_tasks` fixed episodes of `split`.

    Returns a JSON-ready dict with `sa`, `sa_ci95`, `num_tasks`, `checkpoint_step`,
    per-step accuracies and the evaluation settings.
    """
    config = TrainConfig.load(train_dir)
    overrides = {k: v for k, v in {"data_dir": data_dir, "cache_dir": cache_dir}.items() if v is not None}
    if overrides:
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, **overrides))
    seed = config.eval_seed if eval_seed is None else eval_seed
    source = load_episodes(config, split, seed)
    model, config, step, path = restore_model(train_dir, checkpoint, config, source.image_shape)
    steps = config.meta.inner_steps_test if inner_steps_test is None else inner_steps_test
    evaluator = FineTuneEvaluator(
        model, steps=steps, lr=config.meta.inner_lr, mask=finetune_mask(model, config.meta.finetune_test),
        jit_compile=jit_compile,
    )
    start = time.perf_counter()

    def progress(done):
        if done % 200 == 0 or done == num_tasks:
            rate = done / (time.perf_counter() - start)
            logging.info("evaluated %d/%d tasks (%.1f tasks/s)", done, num_tasks, rate)

    results = evaluator.evaluate(source.dataset(0, num_tasks), progress=progress)
    results.update(
        checkpoint_step=step, checkpoint=path, split=split, eval_seed=seed, dataset=config.data.dataset,
        ways=config.data.ways, shots=config.data.shots, queries=config.data.queries, inner_steps_test=steps,
        inner_lr=config.meta.inner_lr, finetune_test=config.meta.finetune_test, bn_mode="batch",
        seconds=time.perf_counter() - start,
    )
    return results
