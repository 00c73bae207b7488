"""Robustness-regularised meta-learning: R-MAML_out, R-MAML_both, ADML and AQ (and MAML).

Every method's per-task meta-loss is `clean_weight * clean + robust_weight * robust`:

| method     | inner loop on the support              | clean term              | robust term                   |
|------------|----------------------------------------|-------------------------|-------------------------------|
| maml       | CE                                     | CE(w'; query)           | none                          |
| rmaml_out  | CE                                     | CE(w'; query)           | gamma_out * R(w')             |
| rmaml_both | CE + gamma_in * R_support (chained)    | CE(w'; query)           | gamma_out * R(w')             |
| aq         | CE                                     | none                    | CE(w'; adversarial query)     |
| adml       | two copies: clean and adversarial      | 1/2 CE(w'_adv; query)   | 1/2 CE(w'_cln; adv. query)    |

R is adversarial cross-entropy on the query (`at`) or the TRADES KL
`mean KL(f(x) || f(x + delta))` over support, query and unlabeled images (`trades`), all at
the fine-tuned weights w'. Attacks see the weights they attack through `tf.stop_gradient`:
the perturbation is a constant for the meta-gradient, which flows only through the loss at
`x + delta` (and through the clean branch of the KL, which TRADES does not detach).
"""

import dataclasses

import tensorflow as tf

from tf_rmaml.attacks import core
from tf_rmaml.errors import ConfigError
from tf_rmaml.meta import inner_loop

METHODS = ("maml", "rmaml_out", "rmaml_both", "adml", "aq")
REGULARIZERS = ("at", "trades")
TRAIN_ATTACKS = ("fgsm_rs", "pgd")
OUTER_UPDATES = ("weighted_sum", "two_optimizers")
DEFAULT_GAMMA_OUT = {"at": 0.2, "trades": 5.0}


@dataclasses.dataclass(frozen=True)
class RobustConfig:
    """How (and whether) the meta-update is robustified. Names as on the command line.

    `gamma_out=None` takes the paper's default (0.2 for AT, 5 for TRADES). `gamma_in`
    weighs the support regulariser of R-MAML_both (default 0.1: the official code's
    adversarial-to-clean inner step ratio, 0.001 / 0.01). `train_attack_step_size=None`:
    1.25 eps for FGSM-RS (Wong et al.), 2.5 eps / steps for PGD (Madry et al.).
    `outer_update="two_optimizers"` reproduces the official code's AT update: the robust
    gradient goes to a second Adam at `adv_meta_lr` (2e-4 / 1e-3 = gamma_out 0.2).
    """

    method: str = "maml"
    regularizer: str = "at"
    gamma_out: float | None = None
    gamma_in: float = 0.1
    train_attack: str = "fgsm_rs"
    train_eps: float = 2 / 255
    train_attack_steps: int = 7
    train_attack_step_size: float | None = None
    outer_update: str = "weighted_sum"
    adv_meta_lr: float = 2e-4

    def __post_init__(self):
        def choose(name, allowed):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"Unknown --{name} {getattr(self, name)!r}. Choose one of: {', '.join(allowed)}.")

        choose("method", METHODS)
        choose("regularizer", REGULARIZERS)
        choose("train_attack", TRAIN_ATTACKS)
        choose("outer_update", OUTER_UPDATES)
        if self.method in ("aq", "adml") and self.regularizer != "at":
            raise ConfigError(f"--method={self.method} is defined with adversarial cross-entropy; use --regularizer=at.")
        if self.gamma_out is not None and not self.gamma_out >= 0:
            raise ConfigError(f"--gamma_out must be >= 0, got {self.gamma_out}.")
        if not self.gamma_in >= 0:
            raise ConfigError(f"--gamma_in must be >= 0, got {self.gamma_in}.")
        if not 0 <= self.train_eps <= 1:
            raise ConfigError(f"--train_eps must be in [0, 1] (pixel units; 2/255 = {2 / 255:.5f}), got {self.train_eps}.")
        if self.train_attack_steps < 1:
            raise ConfigError(f"--train_attack_steps must be >= 1, got {self.train_attack_steps}.")
        if self.train_attack_step_size is not None and not self.train_attack_step_size > 0:
            raise ConfigError(f"--train_attack_step_size must be > 0, got {self.train_attack_step_size}.")
        if self.outer_update == "two_optimizers" and self.method not in ("rmaml_out", "rmaml_both"):
            raise ConfigError("--outer_update=two_optimizers needs a clean and a robust term: "
                              f"--method=rmaml_out or rmaml_both, not {self.method}.")
        if not self.adv_meta_lr > 0:
            raise ConfigError(f"--adv_meta_lr must be > 0, got {self.adv_meta_lr}.")

    @property
    def gamma(self):
        """The resolved gamma_out."""
        return DEFAULT_GAMMA_OUT[self.regularizer] if self.gamma_out is None else float(self.gamma_out)

    @property
    def weights(self):
        """`(clean_weight, robust_weight)` of the meta-loss (with two optimizers both are 1:
        the robust term's weight is the second optimizer's learning rate)."""
        if self.method == "maml":
            return 1.0, 0.0
        if self.method == "aq":
            return 0.0, 1.0
        if self.method == "adml":
            return 0.5, 0.5
        return 1.0, (1.0 if self.outer_update == "two_optimizers" else self.gamma)

    def describe(self):
        d = dataclasses.asdict(self)
        d["gamma_out"] = self.gamma
        d["train_eps_255"] = self.train_eps * 255
        return d


def _stopped(params):
    return [tf.stop_gradient(p) for p in params]


def perturb(model, params, state, x, target, config, seed, loss, training=True):
    """A training attack on `x` at weights `params` (treated as constants); returns `x + delta`.

    `target`: labels (loss "ce") or clean probabilities (loss "kl").
    """
    frozen, frozen_state = _stopped(params), _stopped(state)

    def logits_fn(images):
        return inner_loop.forward(model, frozen, frozen_state, images, training=training)[0]

    eps = config.train_eps
    if config.train_attack == "fgsm_rs":
        x_adv = core.fgsm_rs(logits_fn, x, target, eps, seed=seed, step_size=config.train_attack_step_size, loss=loss)
    else:
        step = config.train_attack_step_size or 2.5 * eps / config.train_attack_steps
        x_adv = core.pgd(logits_fn, x, target, eps, steps=config.train_attack_steps, step_size=step, seed=seed,
                         loss=loss)
    return tf.stop_gradient(x_adv)


def adversarial_ce(model, params, state, x, y, config, seed):
    """`(CE at the attacked batch, its accuracy)` at weights `params`."""
    x_adv = perturb(model, params, state, x, y, config, seed, "ce")
    logits, _ = inner_loop.forward(model, params, state, x_adv)
    return inner_loop.cross_entropy(logits, y), inner_loop.accuracy(logits, y)


def trades_kl(model, params, state, x, config, seed):
    """TRADES: mean over `x` of KL(f(x) || f(x + delta)), delta maximising it; clean branch kept."""
    clean_logits, _ = inner_loop.forward(model, params, state, x)
    clean_probs = tf.nn.softmax(clean_logits)
    x_adv = perturb(model, params, state, x, tf.stop_gradient(clean_probs), config, seed, "kl")
    adv_logits, _ = inner_loop.forward(model, params, state, x_adv)
    kl = tf.reduce_sum(clean_probs * (tf.nn.log_softmax(clean_logits) - tf.nn.log_softmax(adv_logits)), axis=-1)
    return tf.reduce_mean(kl)


def regularizer(model, params, state, task, config, seed, *, support_only=False):
    """R at weights `params`: AT on the query (or support), or TRADES over support + query
    (+ unlabeled) images in one batch (one set of batch statistics, as the paper's code).

    Returns `(value, metrics)`.
    """
    if config.regularizer == "at":
        x, y = (task["support_x"], task["support_y"]) if support_only else (task["query_x"], task["query_y"])
        value, acc = adversarial_ce(model, params, state, x, y, config, seed)
        return value, ({} if support_only else {"query_acc_adv": acc})
    parts = [task["support_x"]]
    if not support_only:
        parts.append(task["query_x"])
        if "unlabeled_x" in task:
            parts.append(task["unlabeled_x"])
    return trades_kl(model, params, state, tf.concat(parts, 0), config, seed), {}


def task_terms(model, params, state, task, meta, robust, mask, seed, aux=None):
    """The two terms of one task's meta-loss (see the module docstring).

    Args:
      model: the Keras model; params/state: meta-weights and BN state as tensors.
      task: dict with `support_x`, `support_y`, `query_x`, `query_y` (and `unlabeled_x`).
      meta: `MetaConfig`; robust: `RobustConfig`; mask: fine-tune mask.
      seed: int32/int64 `[2]` stateless seed of this task's attacks.
      aux: optional `aux(fast, fast_state) -> (loss, metrics)` of an auxiliary task at the
        clean fine-tuned weights (the contrastive task); its metrics join the returned ones.

    Returns:
      `(clean, robust_term, metrics, new_state)`: unweighted scalars (the meta-loss is
      `clean_weight * clean + robust_weight * robust_term`, see `RobustConfig.weights`).
    """
    seeds = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3 + meta.inner_steps))
    sx, sy, qx, qy = task["support_x"], task["support_y"], task["query_x"], task["query_y"]
    zero = tf.zeros([], qx.dtype)

    def adapt(x, loss_fn=None):
        return inner_loop.adapt(model, params, state, x, sy, steps=meta.inner_steps, lr=meta.inner_lr, mask=mask,
                                first_order=meta.first_order, loss_fn=loss_fn)

    def query_ce(fast, fast_state):
        logits, new_state = inner_loop.forward(model, fast, fast_state, qx)
        return inner_loop.cross_entropy(logits, qy), inner_loop.accuracy(logits, qy), new_state

    metrics = {}
    if robust.method == "adml":
        # ADML (Yin et al. 2018): a copy fine-tuned on the adversarial support (attacked at
        # the meta-weights) meets the clean query; the clean copy meets the adversarial query.
        sx_adv = perturb(model, params, state, sx, sy, robust, seeds[0], "ce")
        fast_adv, state_adv, _ = adapt(sx_adv)
        clean, acc, new_state = query_ce(fast_adv, state_adv)
        fast, fast_state, support_losses = adapt(sx)
        robust_term, adv_acc = adversarial_ce(model, fast, fast_state, qx, qy, robust, seeds[1])
        metrics.update(query_acc_after=acc, query_acc_adv=adv_acc)
        if aux is not None:
            metrics.update(aux(fast, fast_state)[1])
        if support_losses:
            metrics["support_loss_before"] = support_losses[0]
        return clean, robust_term, metrics, new_state

    loss_fn = None
    if robust.method == "rmaml_both":
        inner_seeds = iter(seeds[3:])

        def loss_fn(p, s, x, y):
            # Chained: the attack and the step both start at the current fast weights p.
            logits, s = inner_loop.forward(model, p, s, x)
            r, _ = regularizer(model, p, s, {"support_x": x, "support_y": y}, robust, next(inner_seeds),
                               support_only=True)
            return inner_loop.cross_entropy(logits, y) + robust.gamma_in * r, s

    fast, fast_state, support_losses = adapt(sx, loss_fn)
    clean, acc, new_state = query_ce(fast, fast_state)
    metrics["query_acc_after"] = acc
    if aux is not None:
        metrics.update(aux(fast, fast_state)[1])
    if support_losses:
        metrics["support_loss_before"] = support_losses[0]
    robust_term = zero
    if robust.method != "maml":
        robust_term, extra = regularizer(model, fast, fast_state, task, robust, seeds[2])
        metrics.update(extra)
    return clean, robust_term, metrics, new_state
