"""Meta-testing: fine-tune on the clean support set, measure query accuracy per step."""

import math

import numpy as np
import tensorflow as tf

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
    """Clean fine-tuning on the support set and query accuracy after every step.

    First-order inner gradients (nothing differentiates through meta-testing).
    Batch-norm uses the statistics of the batch it sees, as in training and in the
    paper's code: support batches for fine-tuning, the query batch for prediction.

    Args:
      model: the meta-model (its current variables are the meta-weights).
      steps: fine-tuning steps (`--inner_steps_test`).
      lr: fine-tuning learning rate (`--inner_lr`).
      mask: fine-tune mask (see `finetune_mask`).
      jit_compile: compile the per-task function with XLA.
    """

    def __init__(self, model, *, steps, lr, mask, jit_compile=False):
        self.model, self.steps, self.lr, self.mask = model, int(steps), float(lr), tuple(mask)
        self._task_fn = tf.function(self._task, jit_compile=jit_compile)

    def _task(self, support_x, support_y, query_x, query_y):
        params = [v.value for v in self.model.trainable_variables]
        state = [v.value for v in self.model.non_trainable_variables]
        logits, _ = inner_loop.forward(self.model, params, state, query_x)
        accs = [inner_loop.accuracy(logits, query_y)]
        fast = params
        # Unrolled: `steps` is small and the per-step accuracies are all wanted.
        for _ in range(self.steps):
            fast, state, _ = inner_loop.adapt(
                self.model, fast, state, support_x, support_y, steps=1, lr=self.lr, mask=self.mask, first_order=True
            )
            logits, _ = inner_loop.forward(self.model, fast, state, query_x)
            accs.append(inner_loop.accuracy(logits, query_y))
        return tf.stack(accs)

    def task_accuracies(self, task):
        """`[steps + 1]` query accuracies: before fine-tuning, then after each step."""
        return self._task_fn(task["support_x"], task["support_y"], task["query_x"], task["query_y"])

    def evaluate(self, episodes, progress=None):
        """Evaluates every task of an iterable of single-task dicts.

        Returns a dict: `sa` and `sa_ci95` after the last step, `sa_per_step` and
        `sa_ci95_per_step` (lists of steps + 1), and `num_tasks`.
        """
        per_task = []
        for task in episodes:
            per_task.append(self.task_accuracies(task).numpy())
            if progress is not None:
                progress(len(per_task))
        if not per_task:
            raise ValueError("No tasks to evaluate.")
        acc = np.stack(per_task)  # [tasks, steps + 1]
        stats = [mean_ci95(acc[:, k]) for k in range(acc.shape[1])]
        return {
            "sa": stats[-1][0],
            "sa_ci95": stats[-1][1],
            "sa_per_step": [s[0] for s in stats],
            "sa_ci95_per_step": [s[1] for s in stats],
            "num_tasks": int(acc.shape[0]),
        }
