"""The MAML meta-learner: per-task losses, meta-gradients and the distributed step.

`MetaLearner.compute` is the pure part: a meta-batch in, `(grads, metrics, state)` out,
nothing assigned. `MetaLearner.apply` is the only place that changes variables. The
training loop calls one after the other and checks the loss in between, so a
non-finite meta-loss never reaches the weights.

Distribution: both run under `strategy.run`. Each replica sums the gradients of its
own tasks, divided by the *global* meta-batch, and an all-reduce (SUM) makes the mean
over all tasks; with the default strategy that is a single device and a no-op.
"""

import dataclasses

import tensorflow as tf

from tf_rmaml.errors import ConfigError
from tf_rmaml.meta import inner_loop
from tf_rmaml.meta.robust import RobustConfig, task_terms
from tf_rmaml.models.backbones import FINETUNE_MODES, finetune_mask


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Inner-loop settings (names as in the command line)."""

    inner_steps: int = 5
    inner_steps_test: int = 10
    inner_lr: float = 0.01
    first_order: bool = False
    finetune: str = "all"
    finetune_test: str = "all"

    def __post_init__(self):
        if self.inner_steps < 0 or self.inner_steps_test < 0:
            raise ConfigError(
                f"--inner_steps ({self.inner_steps}) and --inner_steps_test ({self.inner_steps_test}) must be >= 0."
            )
        if not self.inner_lr >= 0:
            raise ConfigError(f"--inner_lr must be >= 0, got {self.inner_lr}.")
        for name in ("finetune", "finetune_test"):
            if getattr(self, name) not in FINETUNE_MODES:
                raise ConfigError(f"--{name} must be one of {', '.join(FINETUNE_MODES)}, got {getattr(self, name)!r}.")


TASK_KEYS = ("support_x", "support_y", "query_x", "query_y")
OPTIONAL_TASK_KEYS = ("unlabeled_x",)


class MetaLearner:
    """Second-order (or first-order) MAML, and its robust variants, on a Keras model.

    Args:
      model: a built Keras model (see `tf_rmaml.models.build_backbone`).
      config: `MetaConfig`.
      optimizer: the meta-optimizer (Adam in the paper), created under `strategy`.
      meta_batch: the global number of tasks per meta-update.
      strategy: a `tf.distribute.Strategy` (default: the current one).
      jit_compile: compile the per-replica gradient computation with XLA.
      robust: `RobustConfig` (default: plain MAML).
      adv_optimizer: the second optimizer of `outer_update="two_optimizers"`.
      seed: the run's seed; the training attacks of task `t` at meta-iteration `s` use
        `fold_in(fold_in([seed, 4242], s), t)`, so a resumed run attacks as an unbroken one.
      contrastive: optional `ContrastiveTask`; its projection head's variables are meta-learned
        with the model's (gradients: the model's, then the head's).

    Example:
      learner = MetaLearner(model, MetaConfig(inner_steps=5), keras.optimizers.Adam(1e-3), meta_batch=4)
      grads, metrics, state = learner.compute(batch)   # batch: dict of [4, ...] tensors
      learner.apply(grads, state)
    """

    def __init__(self, model, config, optimizer, *, meta_batch, strategy=None, jit_compile=False, robust=None,
                 adv_optimizer=None, seed=0, contrastive=None):
        self.model, self.config, self.optimizer = model, config, optimizer
        self.contrastive = contrastive
        self.robust = robust or RobustConfig()
        self.two_optimizers = self.robust.outer_update == "two_optimizers"
        if self.two_optimizers and adv_optimizer is None:
            raise ConfigError("outer_update='two_optimizers' needs adv_optimizer.")
        self.adv_optimizer, self.seed = adv_optimizer, int(seed)
        self.meta_batch = int(meta_batch)
        self.strategy = strategy or tf.distribute.get_strategy()
        if self.meta_batch % self.strategy.num_replicas_in_sync:
            raise ConfigError(
                f"--meta_batch={self.meta_batch} must be a multiple of the number of replicas "
                f"({self.strategy.num_replicas_in_sync})."
            )
        self.mask = finetune_mask(model, config.finetune)
        self.test_mask = finetune_mask(model, config.finetune_test)
        self._replica_grads = tf.function(self._replica_grads_fn, jit_compile=jit_compile)
        self._compute = tf.function(self._compute_fn)
        self._apply = tf.function(self._apply_fn)

    # ---- the maths of one task -------------------------------------------------
    @property
    def variables(self):
        """What the meta-optimizer updates: the model's trainable variables (and the projection head's)."""
        head = self.contrastive.head.trainable_variables if self.contrastive else []
        return list(self.model.trainable_variables) + list(head)

    def task_terms(self, params, state, task, seed=None, head_params=None, views=None):
        """`(clean, robust, metrics, new_state)` of one task (see `tf_rmaml.meta.robust`)."""
        seed = tf.zeros([2], tf.int64) if seed is None else seed
        aux = None
        if self.contrastive is not None:
            cl_seed = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), 99)

            def aux(fast, fast_state):
                return self.contrastive.loss(fast, fast_state, head_params, views, cl_seed)

        return task_terms(self.model, params, state, task, self.config, self.robust, self.mask, seed, aux=aux)

    def task_loss(self, params, state, task, seed=None, head_params=None, views=None):
        """Meta-loss of one task: for MAML the query cross-entropy at the adapted weights;
        for the robust methods the weighted sum of `RobustConfig.weights`; plus
        `gamma_cl` x the contrastive loss when there is a contrastive task.

        Returns `(loss, metrics, new_state)`.
        """
        clean, robust, metrics, state = self.task_terms(params, state, task, seed, head_params, views)
        wc, wr = self.robust.weights
        loss = wc * clean + wr * robust if self.robust.method != "maml" else clean
        if self.contrastive is not None:
            loss += self.contrastive.config.gamma_cl * metrics["cl_loss"]
        metrics = dict(metrics, meta_loss=loss)
        if self.robust.method != "maml":
            metrics.update(clean_loss=clean, robust_loss=robust)
        return loss, metrics, state

    # ---- pure: gradients of a meta-batch --------------------------------------
    def _replica_grads_fn(self, batch, step=0):
        # The tf.Variables behind the Keras variables: what tapes and stateless_call take.
        params = [v.value for v in self.model.trainable_variables]
        state = [v.value for v in self.model.non_trainable_variables]
        head_params = [v.value for v in self.contrastive.head.trainable_variables] if self.contrastive else []
        tasks = batch["support_x"].shape[0]
        grads = [tf.zeros_like(p) for p in params + head_params] * (2 if self.two_optimizers else 1)
        sums, new_state = {}, [tf.zeros_like(s) for s in state]
        replica = tf.distribute.get_replica_context()
        replica_id = tf.cast(replica.replica_id_in_sync_group if replica else 0, tf.int64)
        step_seed = tf.random.experimental.stateless_fold_in(
            tf.constant([self.seed, 4242], tf.int64), tf.cast(step, tf.int64))
        wc, wr = self.robust.weights
        # Python loop over this replica's tasks: each task is an independent subgraph
        # (measured faster than tf.vectorized_map), and its tape is freed after use.
        for t in range(tasks):
            task = {k: batch[k][t] for k in TASK_KEYS + OPTIONAL_TASK_KEYS if k in batch}
            seed = tf.random.experimental.stateless_fold_in(step_seed, replica_id * tasks + t)
            views = self.contrastive.views(task) if self.contrastive else None
            with tf.GradientTape(persistent=self.two_optimizers) as tape:
                tape.watch(head_params)
                loss, metrics, task_state = self.task_loss(params, state, task, seed, head_params, views)
                scaled = loss / self.meta_batch
                if self.two_optimizers:
                    clean_scaled = (loss - wr * metrics["robust_loss"]) / self.meta_batch
                    robust_scaled = wr * metrics["robust_loss"] / self.meta_batch
            if self.two_optimizers:
                # The official code's update: the clean and the robust gradients, both at the
                # current weights, feed two Adam optimizers (the robust one at --adv_meta_lr).
                zero = tf.UnconnectedGradients.ZERO
                task_grads = tape.gradient(clean_scaled, params + head_params, unconnected_gradients=zero)
                task_grads += tape.gradient(robust_scaled, params + head_params, unconnected_gradients=zero)
                del tape
            else:
                task_grads = tape.gradient(scaled, params + head_params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            grads = [g + tg for g, tg in zip(grads, task_grads)]
            logits_before, _ = inner_loop.forward(self.model, params, state, task["query_x"])
            metrics["query_acc_before"] = inner_loop.accuracy(logits_before, task["query_y"])
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + tf.cast(v, tf.float32) / self.meta_batch
            new_state = [s + ts / self.meta_batch for s, ts in zip(new_state, task_state)]
        return grads, sums, new_state

    def _compute_fn(self, batch):
        step = tf.convert_to_tensor(self.optimizer.iterations)

        def replica_fn(local_batch, step):
            grads, sums, state = self._replica_grads(local_batch, step)
            ctx = tf.distribute.get_replica_context()
            return (
                ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads),
                ctx.all_reduce(tf.distribute.ReduceOp.SUM, sums),
                ctx.all_reduce(tf.distribute.ReduceOp.SUM, state),
            )

        grads, sums, state = self.strategy.run(replica_fn, args=(batch, step))
        first = self.strategy.experimental_local_results
        grads, sums, state = [first(g)[0] for g in grads], {k: first(v)[0] for k, v in sums.items()}, [first(s)[0] for s in state]
        sums["grad_norm"] = tf.cast(tf.linalg.global_norm(grads), tf.float32)
        return grads, sums, state

    def compute(self, batch):
        """Meta-gradients of a meta-batch; changes nothing.

        Args:
          batch: dict with `support_x` `[meta_batch, ways*shots, H, W, C]`, `support_y`,
            `query_x`, `query_y` (a distributed dataset element under a strategy).

        Returns:
          `(grads, metrics, state)`: gradients aligned with
          `model.trainable_variables` (already averaged over the global meta-batch;
          with two optimizers, the clean gradients followed by the robust ones),
          a dict of scalar metrics averaged over tasks (`meta_loss`,
          `query_acc_before`, `query_acc_after`, `support_loss_before`, `grad_norm`),
          and the tasks' mean BN moving statistics.
        """
        return self._compute(batch)

    # ---- side effects ---------------------------------------------------------------
    def _apply_fn(self, grads, state):
        # Cross-replica context: the gradients are already all-reduced, so every copy of a
        # mirrored variable receives the same update.
        variables = self.variables
        self.optimizer.apply_gradients(zip(grads[: len(variables)], variables))
        if self.two_optimizers:
            self.adv_optimizer.apply_gradients(zip(grads[len(variables):], variables))
        for var, value in zip(self.model.non_trainable_variables, state):
            var.assign(value)

    def apply(self, grads, state):
        """One meta-optimizer step, and stores the BN moving statistics.

        `stateless_call` never assigns the moving statistics; they are stored here on
        purpose so that `training=False` inference (`--bn_mode=running`) has them.
        """
        self._apply(grads, state)
