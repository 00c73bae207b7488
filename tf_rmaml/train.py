"""The training loop: the one place that assigns weights, writes summaries and checkpoints.

A run is a pure function of its config: episode `i` of meta-iteration `s` is
episode `s * meta_batch + i` of the train split, so a run resumed from a checkpoint
at step `s` sees exactly the episodes, weights and optimizer state that a run never
stopped would have seen.
"""

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tf_rmaml.config import TrainConfig, config_differences
from tf_rmaml.data import sources
from tf_rmaml.data.episodes import EpisodeSource, UnlabeledSpec
from tf_rmaml.data.omniglot import character_groups
from tf_rmaml.data.unlabeled import load_pool
from tf_rmaml.errors import ConfigError
from tf_rmaml.meta.contrastive import ContrastiveTask, build_head
from tf_rmaml.meta.evaluation import FineTuneEvaluator
from tf_rmaml.meta.learner import MetaLearner
from tf_rmaml.models.backbones import build_backbone
from tf_rmaml.signals import StopRequest

CHECKPOINT_SUBDIR = "checkpoints"


def load_episodes(config, split, seed):
    """An `EpisodeSource` for one split of the configured dataset."""
    d = config.data
    data = sources.load_split(
        d.dataset, split, data_dir=d.data_dir, cache_dir=d.cache_dir, image_size=d.image_size,
        omniglot_split=d.omniglot_split, omniglot_rotations=d.omniglot_rotations and split == "train",
        download=d.download,
    )
    unlabeled = None
    if split == "train" and d.unlabeled_source != "none":
        pool = None if d.unlabeled_source == "split" else load_pool(d.unlabeled_source, data.image_shape)
        unlabeled = UnlabeledSpec(per_class=d.unlabeled_per_class, classes=d.unlabeled_classes, pool=pool,
                                  groups=character_groups(data.class_names))
    return EpisodeSource(data.images, split, d.spec, seed, unlabeled=unlabeled)


def build_model(config, input_shape):
    """The configured backbone with its `ways`-way head, built."""
    return build_backbone(
        config.backbone, ways=config.data.ways, input_shape=input_shape, filters=config.filters, seed=config.seed
    )


def make_optimizer(config, lr=None):
    """Adam at `lr` (default `config.meta_lr`), cosine-decayed if the config says so."""
    lr = config.meta_lr if lr is None else lr
    if config.meta_lr_decay_steps:
        # Follows the optimizer's own step counter, which is checkpointed: resumes exactly.
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=config.meta_lr_decay_steps)
    # epsilon 1e-8 as torch.optim.Adam (Keras' default is 1e-7).
    return keras.optimizers.Adam(learning_rate=lr, epsilon=1e-8)


def make_checkpoint(model, optimizer=None, adv_optimizer=None, contrastive=None):
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    kwargs = {"step": step, "model": model}
    if contrastive is not None:
        # The head, and the augmentation layers' random state (exact resume of the views).
        kwargs["projection_head"] = contrastive.head
        kwargs["augment_state"] = contrastive.augment.state()
    if optimizer is not None:
        kwargs["optimizer"] = optimizer
    if adv_optimizer is not None:
        kwargs["adv_optimizer"] = adv_optimizer
    return tf.train.Checkpoint(**kwargs), step


def _format_eta(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _write_config(config, train_dir):
    path = os.path.join(train_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = TrainConfig.from_dict(json.load(f))
        diff = config_differences(old, config)
        if diff:
            raise ConfigError(
                f"--train_dir={train_dir} holds a run with a different configuration ({', '.join(diff)}). "
                "Resume it with the same flags, or start a new run in another --train_dir."
            )
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json())
    os.replace(tmp, path)


def flat_config(config):
    """The config as a flat dict of scalars ("meta.inner_lr": 0.01, ...), for the hparams table."""
    out = {}

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            elif isinstance(v, (bool, int, float, str)):
                out[prefix + k] = v
            elif v is not None:
                out[prefix + k] = str(v)

    walk(dataclasses.asdict(config), "")
    return out


def write_hparams(config, train_dir):
    """Records the run's configuration for TensorBoard's HParams dashboard; the metrics beside it
    are the run's scalars (val/sa while training; eval_<split>/sa, ra from rmaml-eval)."""
    from tensorboard.plugins.hparams import api as hp

    with tf.summary.create_file_writer(train_dir).as_default():
        hp.hparams(flat_config(config), trial_id=os.path.basename(os.path.normpath(train_dir)))


def validate(evaluator, source, num_tasks):
    """Meta-validation on the first `num_tasks` episodes of `source` (fixed for the run)."""
    return evaluator.evaluate(source.dataset(0, num_tasks))


def train(config, train_dir, *, strategy=None):
    """Meta-trains (or resumes) a run in `train_dir`; returns the final metrics dict.

    SIGINT or SIGTERM (from the main thread) ends the run after the current meta-iteration with a
    checkpoint of it; the dict then has `stopped_by` (the signal's name).

    Args:
      config: a `TrainConfig`.
      train_dir: directory for `config.json`, checkpoints and TensorBoard logs.
      strategy: a `tf.distribute.Strategy`; default: the current (single-device) one.
    """
    strategy = strategy or tf.distribute.get_strategy()
    os.makedirs(train_dir, exist_ok=True)
    _write_config(config, train_dir)

    train_source = load_episodes(config, "train", config.seed)
    val_source = load_episodes(config, "val", config.eval_seed) if config.eval_every else None

    with strategy.scope():
        model = build_model(config, train_source.image_shape)
        head = build_head(model, config.contrastive.cl_head_dims, seed=config.seed) if config.contrastive.enabled else None
        variables = list(model.trainable_variables) + (list(head.trainable_variables) if head else [])
        optimizer = make_optimizer(config)
        optimizer.build(variables)
        adv_optimizer = None
        if config.robust.outer_update == "two_optimizers":
            adv_optimizer = make_optimizer(config, config.robust.adv_meta_lr)
            adv_optimizer.build(variables)
        contrastive = None
        if head is not None:
            contrastive = ContrastiveTask(model, head, config.contrastive, config.robust, train_source.image_shape,
                                          seed=config.seed)
        checkpoint, step_var = make_checkpoint(model, optimizer, adv_optimizer, contrastive)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(train_dir, CHECKPOINT_SUBDIR), max_to_keep=config.keep_checkpoints
    )
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("Resumed from %s (step %d).", manager.latest_checkpoint, int(step_var.numpy()))
    start = int(step_var.numpy())
    r = config.robust
    method = r.method
    if r.method != "maml":
        # The weights actually used (AQ ignores gamma_out, ADML is 1/2 + 1/2), not the flag's value.
        clean_weight, robust_weight = r.weights
        details = [str(r.regularizer), f"meta-loss {clean_weight:g} x clean + {robust_weight:g} x robust"]
        if r.method == "rmaml_both":
            details.append(f"gamma_in {r.gamma_in:g}")
        details += [f"{r.train_attack} eps {r.train_eps * 255:.1f}/255", r.outer_update]
        method += f" ({', '.join(details)})"
    logging.info(
        "%s: %d trainable parameters, %s %d-way %d-shot, meta-batch %d, steps %d -> %d, method %s.",
        config.backbone, sum(int(np.prod(v.shape)) for v in model.trainable_variables),
        config.data.dataset, config.data.ways, config.data.shots, config.meta_batch, start, config.max_steps, method,
    )

    learner = MetaLearner(
        model, config.meta, optimizer, meta_batch=config.meta_batch, strategy=strategy, jit_compile=config.jit_compile,
        robust=config.robust, adv_optimizer=adv_optimizer, seed=config.seed,
        contrastive=contrastive,
    )
    evaluator = FineTuneEvaluator(
        model, steps=config.meta.inner_steps_test, lr=config.meta.inner_lr, mask=learner.test_mask,
        jit_compile=config.jit_compile,
    )
    if start == 0:
        write_hparams(config, train_dir)
    writer = tf.summary.create_file_writer(os.path.join(train_dir, "train"))
    val_writer = tf.summary.create_file_writer(os.path.join(train_dir, "val"))
    results = {}
    if start >= config.max_steps:
        logging.info("Nothing to do: step %d >= --max_steps=%d.", start, config.max_steps)
        return results

    dataset = train_source.dataset(start * config.meta_batch, config.max_steps * config.meta_batch, config.meta_batch)
    batches = iter(strategy.experimental_distribute_dataset(dataset))
    window_start, window_steps = time.perf_counter(), 0
    run_start = time.perf_counter()
    step = start
    # One meta-iteration moves the weights, the optimizer, the step and the augmenter's random state
    # together; stopping between two of those would save them out of step, so a signal stops the
    # loop after the iteration, with a checkpoint (a second one stops at once, the last checkpoint kept).
    with StopRequest("%s: stopping after this meta-iteration, with a checkpoint (send it again to stop at once, "
                     "without saving).") as stop:
        for step in range(start + 1, config.max_steps + 1):
            grads, metrics, bn_state = learner.compute(next(batches))
            metrics = {k: float(v) for k, v in metrics.items()}
            for name, value in metrics.items():
                if not np.isfinite(value):
                    raise FloatingPointError(
                        f"Non-finite {name} ({value}) at meta-iteration {step}; the weights were not updated "
                        f"and the last checkpoint is {manager.latest_checkpoint}. "
                        "Lower --meta_lr or --inner_lr, or check the data."
                    )
            learner.apply(grads, bn_state)
            step_var.assign(step)
            window_steps += 1
            if step % config.log_every == 0 or step == config.max_steps:
                now = time.perf_counter()
                its = window_steps / (now - window_start)
                window_start, window_steps = now, 0
                with writer.as_default(step=step):
                    for name, value in metrics.items():
                        tf.summary.scalar(name, value)
                    tf.summary.scalar("iterations_per_second", its)
                robust = "".join(f"  {k} {metrics[k]:.4f}" for k in ("clean_loss", "robust_loss", "query_acc_adv", "cl_loss")
                                 if k in metrics)
                logging.info(
                    "step %d/%d  meta_loss %.4f  query_acc before %.3f after %.3f%s  %.2f it/s  ETA %s",
                    step, config.max_steps, metrics["meta_loss"], metrics["query_acc_before"],
                    metrics["query_acc_after"], robust, its, _format_eta((config.max_steps - step) / max(its, 1e-9)),
                )
            if step % config.checkpoint_every == 0 or step == config.max_steps or stop.signal is not None:
                # Before validation: a failure there must not cost training progress.
                manager.save(checkpoint_number=step)
            if stop.signal is not None:
                logging.info("Stopped by %s after step %d, saved; run the same command to resume.", stop.signal, step)
                results["stopped_by"] = stop.signal
                break
            if val_source is not None and (step % config.eval_every == 0 or step == config.max_steps):
                val = validate(evaluator, val_source, config.eval_tasks)
                with val_writer.as_default(step=step):
                    tf.summary.scalar("sa", val["sa"])
                    tf.summary.scalar("sa_ci95", val["sa_ci95"])
                logging.info(
                    "step %d  meta-validation SA %.2f%% +- %.2f%% (%d tasks, %d fine-tuning steps)",
                    step, 100 * val["sa"], 100 * val["sa_ci95"], val["num_tasks"], config.meta.inner_steps_test,
                )
                results["val"] = val
    writer.flush()
    val_writer.flush()
    results["step"] = int(step_var.numpy())
    results["seconds"] = time.perf_counter() - run_start
    results["last_metrics"] = metrics
    return results
