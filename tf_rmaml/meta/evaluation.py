"""Meta-testing: fine-tune on the clean support set, measure query accuracy per step."""

import json
import math
import os

import numpy as np
import tensorflow as tf

from tf_rmaml.attacks.evaluation import perturb, robust_correct, support_robust_correct
from tf_rmaml.errors import ConfigError
from tf_rmaml.meta import inner_loop


def mean_ci95(values):
    """Mean and the half-width of its 95% confidence interval (normal approximation).

    Args:
      values: per-task accuracies (any sequence of floats).

    Returns:
      `(mean, half_width)`; half_width is 1.96 * sample std / sqrt(n), 0 for n < 2.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_ci95 needs at least one value.")
    if values.size < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(values.size))


class FineTuneEvaluator:
    """Clean fine-tuning on the support set; query accuracy (and robust accuracy) per step.

    First-order inner gradients (nothing differentiates through meta-testing).
    With `bn_mode="batch"` (default, as in training and in the paper's code) batch norm uses
    the statistics of the batch it sees: support batches for fine-tuning, the (clean or
    perturbed) query batch for prediction. `bn_mode="running"` uses the stored moving
    statistics everywhere (no transduction).

    Args:
      model: the meta-model (its current variables are the meta-weights).
      steps: fine-tuning steps (`--inner_steps_test`).
      lr: fine-tuning learning rate (`--inner_lr`).
      mask: fine-tune mask (see `finetune_mask`).
      attacks: `AttackConfig`s to measure robust accuracy with; the first is the headline RA.
      attack_at: "all" runs the first attack after every fine-tuning step (and before the
        first), "last" only after the last one; the other attacks always run after the last.
      bn_mode: "batch" or "running".
      seed: integer seed of the attacks' random starts (task `i` uses fold_in(seed, i)).
      jit_compile: compile the per-task function with XLA.
      surrogate: a second, independently trained model for the same images and classes; attacks
        with target "transfer" are computed on it (fine-tuned on the same clean support) and
        applied to `model` (black box).
      surrogate_finetune: `(steps, lr, mask)` of the surrogate's fine-tuning (default: `steps`,
        `lr` and all layers).
      tasks_per_call: tasks evaluated by one call of the compiled function (a `tf.map_fn`
        whose iterations run in parallel); results do not depend on it.
    """

    def __init__(self, model, *, steps, lr, mask, attacks=(), attack_at="all", bn_mode="batch", seed=0,
                 jit_compile=False, surrogate=None, surrogate_finetune=None, tasks_per_call=8):
        if bn_mode not in ("batch", "running"):
            raise ConfigError(f"--bn_mode must be batch or running, got {bn_mode!r}.")
        if attack_at not in ("all", "last"):
            raise ConfigError(f"attack_at must be all or last, got {attack_at!r}.")
        self.model, self.steps, self.lr, self.mask = model, int(steps), float(lr), tuple(mask)
        self.attacks, self.attack_at, self.bn_mode = tuple(attacks), attack_at, bn_mode
        self.seed = int(seed)
        self.surrogate = surrogate
        if surrogate is not None and surrogate_finetune is None:
            surrogate_finetune = (self.steps, self.lr, [True] * len(surrogate.trainable_variables))
        self.surrogate_finetune = surrogate_finetune
        if surrogate is None and any(a.target == "transfer" for a in self.attacks):
            raise ConfigError("Transfer attacks need a surrogate model.")
        if tasks_per_call < 1:
            raise ConfigError(f"tasks_per_call must be >= 1, got {tasks_per_call}.")
        self.tasks_per_call = int(tasks_per_call)
        self._batch_fn = tf.function(self._batch, jit_compile=jit_compile)

    def _batch(self, support_x, support_y, query_x, query_y, index):
        """`_task` over a leading task axis; independent tasks run as parallel iterations."""
        return tf.map_fn(
            lambda args: self._task(*args), (support_x, support_y, query_x, query_y, index),
            fn_output_signature=(tf.bool, tf.bool), parallel_iterations=self.tasks_per_call,
        )

    def _task(self, support_x, support_y, query_x, query_y, index):
        training = self.bn_mode == "batch"
        params = [v.value for v in self.model.trainable_variables]
        state = [v.value for v in self.model.non_trainable_variables]
        seed = tf.random.experimental.stateless_fold_in(tf.constant([self.seed, 77], tf.int64), index)
        query_y = tf.cast(query_y, tf.int32)
        clean, robust = [], [[] for _ in self.attacks]
        fast, state0 = params, state
        # Unrolled: `steps` is small and the per-step accuracies are all wanted.
        for step in range(self.steps + 1):
            if step > 0:
                fast, state, _ = inner_loop.adapt(
                    self.model, fast, state, support_x, support_y, steps=1, lr=self.lr, mask=self.mask,
                    first_order=True, training=training,
                )

            def logits_fn(x, fast=fast, state=state):
                return inner_loop.forward(self.model, fast, state, x, training=training)[0]

            clean_correct = tf.equal(tf.argmax(logits_fn(query_x), -1, output_type=tf.int32), query_y)
            clean.append(clean_correct)
            for k, attack in enumerate(self.attacks):
                # Only the headline attack (k == 0) runs at every step; the others at the last.
                # A support attack poisons the whole fine-tuning, so it is scored at the last step.
                if attack.target == "support" and step == self.steps:
                    robust[k].append(support_robust_correct(
                        lambda xs: self._finetuned_query_logits(params, state0, xs, support_y, query_x, training),
                        support_x, query_x, query_y, attack, seed))
                elif attack.target == "transfer" and step == self.steps:
                    x_adv = perturb(self._surrogate_logits_fn(support_x, support_y, training), query_x, query_y, attack,
                                    attack.runs()[0], seed)
                    robust[k].append(tf.logical_and(
                        clean_correct, tf.equal(tf.argmax(logits_fn(x_adv), -1, output_type=tf.int32), query_y)))
                elif attack.target == "query" and (step == self.steps or (k == 0 and self.attack_at == "all")):
                    robust[k].append(robust_correct(logits_fn, query_x, query_y, attack, seed))
                else:
                    robust[k].append(tf.zeros_like(clean_correct))
        clean = tf.stack(clean)  # [steps + 1, queries]
        robust = tf.stack([tf.stack(r) for r in robust]) if self.attacks else tf.zeros([0, self.steps + 1, 1], tf.bool)
        return clean, robust

    def _surrogate_logits_fn(self, support_x, support_y, training):
        params = [v.value for v in self.surrogate.trainable_variables]
        state = [v.value for v in self.surrogate.non_trainable_variables]
        steps, lr, mask = self.surrogate_finetune
        fast, state, _ = inner_loop.adapt(
            self.surrogate, params, state, support_x, support_y, steps=steps, lr=lr, mask=mask,
            first_order=True, training=training,
        )
        return lambda x: inner_loop.forward(self.surrogate, fast, state, x, training=training)[0]

    def _finetuned_query_logits(self, params, state, support_x, support_y, query_x, training):
        # Second order through the fine-tuning: the support attack needs d(query loss)/d(support).
        fast, state, _ = inner_loop.adapt(
            self.model, params, state, support_x, support_y, steps=self.steps, lr=self.lr, mask=self.mask,
            first_order=False, training=training,
        )
        return inner_loop.forward(self.model, fast, state, query_x, training=training)[0]

    def evaluate(self, episodes, progress=None, done=None):
        """Evaluates every task of an iterable of single-task dicts (in order; task `i` gets
        attack seed `fold_in(seed, i)`).

        `done` resumes an interrupted evaluation: the outcomes of tasks `0 .. len(done) - 1`
        (a list from an earlier call, see `save_outcomes`), to which `episodes` (starting at task
        `len(done)`) appends one outcome per task as each compiled call returns, whole calls at a
        time; a caller can save it from `progress(tasks_done)` and resume from it. Tasks do not
        depend on each other, so a resumed evaluation returns what an uninterrupted one would.

        Returns a dict: `sa` and `sa_ci95` after the last step, `sa_per_step` and
        `sa_ci95_per_step` (lists of steps + 1), `num_tasks`; with attacks also `ra`,
        `ra_ci95`, `ra_per_step`, `ra_ci95_per_step`, `ra_on_clean_correct` (of the first
        attack) and `attacks` (one entry per attack, with its description and numbers).
        `sa_per_task` and each attack's `ra_per_task` (after the last step, in task order) allow
        paired comparisons of two attacks, or two models, on the same tasks.
        RA counts a query as robust only if it is correct clean and under every run of the attack.
        """
        done = [] if done is None else done
        for batch, count in _batches(episodes, self.tasks_per_call):
            # A short last batch is padded with copies of its last task (one trace for all
            # calls); the copies' results are dropped.
            first = len(done)
            index = tf.minimum(tf.range(first, first + self.tasks_per_call, dtype=tf.int64), first + count - 1)
            cleans, robusts = self._batch_fn(batch["support_x"], batch["support_y"], batch["query_x"],
                                             batch["query_y"], index)
            # One extend: an interrupt between two appends could not leave half a call behind.
            done.extend(
                # [steps + 1] SA, [attacks, steps + 1] RA, clean-correct and robust queries at the last step.
                (clean.mean(-1), robust.mean(-1), clean[-1].sum(), robust[:, -1].sum(-1))
                for clean, robust in zip(cleans.numpy()[:count], robusts.numpy()[:count])
            )
            if progress is not None:
                progress(len(done))
        return self.summarize(done)

    def summarize(self, done):
        """The results dict of `evaluate` from per-task outcomes."""
        if not done:
            raise ValueError("No tasks to evaluate.")
        sa, ra, clean_last, robust_last = _stack_outcomes(done).values()
        stats = [mean_ci95(sa[:, k]) for k in range(sa.shape[1])]
        out = {
            "sa": stats[-1][0],
            "sa_ci95": stats[-1][1],
            "sa_per_step": [s[0] for s in stats],
            "sa_ci95_per_step": [s[1] for s in stats],
            "num_tasks": int(sa.shape[0]),
            "sa_per_task": sa[:, -1].tolist(),
            "bn_mode": self.bn_mode,
        }
        if not self.attacks:
            return out
        clean_total = float(np.sum(clean_last))
        entries = []
        for k, attack in enumerate(self.attacks):
            every = k == 0 and self.attack_at == "all" and attack.target == "query"
            steps_attacked = list(range(self.steps + 1)) if every else [self.steps]
            per_step = {s: mean_ci95(ra[:, k, s]) for s in steps_attacked}
            entries.append({
                **attack.describe(),
                "ra": per_step[self.steps][0],
                "ra_ci95": per_step[self.steps][1],
                "ra_per_step": [per_step[s][0] if s in per_step else None for s in range(self.steps + 1)],
                "ra_ci95_per_step": [per_step[s][1] if s in per_step else None for s in range(self.steps + 1)],
                "ra_on_clean_correct": float(np.sum(robust_last[:, k]) / clean_total) if clean_total else 0.0,
                "ra_per_task": ra[:, k, self.steps].tolist(),
            })
        head = entries[0]
        out.update({k: head[k] for k in ("ra", "ra_ci95", "ra_per_step", "ra_ci95_per_step", "ra_on_clean_correct",
                                         "ra_per_task")})
        out["attack"] = {k: v for k, v in head.items() if not k.startswith("ra")}
        out["attacks"] = entries
        return out


def save_outcomes(path, done, settings, seconds):
    """Writes per-task outcomes (see `FineTuneEvaluator.evaluate`) atomically to an .npz file,
    with `settings` (a JSON-ready dict: what produced them) and the `seconds` spent so far."""
    arrays = {"settings": np.asarray(json.dumps(settings, sort_keys=True)), "seconds": np.asarray(float(seconds))}
    if done:
        arrays.update(_stack_outcomes(done))
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def load_outcomes(path):
    """`(done, settings, seconds)` from a file written by `save_outcomes`."""
    with np.load(path) as f:
        settings, seconds = json.loads(str(f["settings"])), float(f["seconds"])
        if "sa" not in f:
            return [], settings, seconds
        done = list(zip(*(f[k] for k in _OUTCOME_KEYS)))
    return done, settings, seconds


_OUTCOME_KEYS = ("sa", "ra", "clean_last", "robust_last")


def _stack_outcomes(done):
    """Per-task outcomes as four arrays, in `_OUTCOME_KEYS` order: SA [tasks, steps + 1],
    RA [tasks, attacks, steps + 1], clean-correct [tasks] and robust [tasks, attacks] query
    counts at the last step. `load_outcomes` is its inverse."""
    return dict(zip(_OUTCOME_KEYS, (np.stack([d[k] for d in done]) for k in range(len(_OUTCOME_KEYS)))))


def _batches(episodes, size):
    """Yields `(batch, count)`: `size` consecutive single-task dicts stacked, of which the
    first `count` are real (a short last chunk is padded with copies of its last task)."""
    keys = ("support_x", "support_y", "query_x", "query_y")
    chunk = []
    for task in episodes:
        chunk.append(task)
        if len(chunk) == size:
            yield {k: tf.stack([t[k] for t in chunk]) for k in keys}, size
            chunk = []
    if chunk:
        count = len(chunk)
        chunk += [chunk[-1]] * (size - count)
        yield {k: tf.stack([t[k] for t in chunk]) for k in keys}, count
