"""Robust accuracy of a batch under an attack specification, counted honestly.

An example is robust only if it is classified correctly under *every* attack run of the
specification (each restart of each loss, each run scored on its own perturbed batch): the
per-example worst case over runs, never a merged batch that could re-normalise its way back to
a correct answer under batch-statistics batch norm.
"""

import dataclasses

import tensorflow as tf

from tf_rmaml.attacks import core
from tf_rmaml.attacks.summary import run_name
from tf_rmaml.errors import ConfigError

ATTACKS = ("none", "fgsm", "fgsm_rs", "pgd", "apgd_ce", "apgd_dlr", "strong", "noise")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """What `--attack` and its flags describe. Radii are in [0, 1] pixel units.

    `strong` is the worst case over PGD (with `restarts`, and at least 5 of them, and at least
    twice the steps), APGD-CE and APGD-DLR (100 steps each at least).
    `noise` is uniform random noise in the ball (a gradient-masking check, not an attack).
    """

    name: str = "pgd"
    eps: float = 10 / 255
    steps: int = 10
    step_size: float = 2 / 255
    restarts: int = 1
    norm: str = "linf"
    target: str = "query"

    def __post_init__(self):
        # "transfer": a query attack computed on a surrogate model (a gradient-masking check).
        if self.target not in ("query", "support", "transfer"):
            raise ConfigError(f"--attack_target must be query or support, got {self.target!r}.")
        if self.target == "support" and self.name not in ("pgd", "fgsm", "none"):
            raise ConfigError(f"--attack_target=support supports --attack=pgd or fgsm, got {self.name!r}.")
        if self.name not in ATTACKS:
            raise ConfigError(f"Unknown --attack {self.name!r}. Choose one of: {', '.join(ATTACKS)}.")
        if not 0.0 <= self.eps <= 1.0:
            raise ConfigError(f"--eps must be in [0, 1] (pixel units; use --eps_255 for 1/255 units), got {self.eps}.")
        if self.steps < 1:
            raise ConfigError(f"--attack_steps must be >= 1, got {self.steps}.")
        if self.restarts < 1:
            raise ConfigError(f"--attack_restarts must be >= 1, got {self.restarts}.")
        if not self.step_size > 0:
            raise ConfigError(f"--attack_step_size must be > 0, got {self.step_size}.")
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"--attack_norm must be linf or l2, got {self.norm!r}.")
        if self.norm == "l2" and self.name not in ("pgd", "noise", "none"):
            raise ConfigError(f"--attack_norm=l2 is implemented for --attack=pgd only (FGSM and APGD, and so strong, "
                              f"are L-inf here), got --attack={self.name}.")

    def runs(self):
        """The list of (kind, loss, steps, restart index) runs this attack consists of."""
        if self.name == "none":
            return []
        if self.name in ("fgsm", "fgsm_rs", "noise"):
            return [(self.name, "ce", 1, r) for r in range(self.restarts)]
        if self.name == "pgd":
            return [("pgd", "ce", self.steps, r) for r in range(self.restarts)]
        if self.name in ("apgd_ce", "apgd_dlr"):
            return [("apgd", self.name[5:], self.steps, r) for r in range(self.restarts)]
        pgd_steps, apgd_steps = max(2 * self.steps, 20), max(self.steps, 100)
        return (
            [("pgd", "ce", pgd_steps, r) for r in range(max(self.restarts, 5))]
            + [("apgd", "ce", apgd_steps, 0), ("apgd", "dlr", apgd_steps, 0)]
        )

    def describe(self):
        return {
            "attack": self.name, "eps": self.eps, "eps_255": self.eps * 255, "steps": self.steps,
            "step_size": self.step_size, "restarts": self.restarts, "norm": self.norm, "target": self.target,
            "runs": [run_name(run) for run in self.runs()],
        }


def _run(logits_fn, x, y, config, run, seed):
    """`(x_adv, fooled)` of one run; `fooled` ([B] bool: misclassified at some iterate) or None."""
    kind, loss, steps, restart = run
    seed = tf.random.experimental.stateless_fold_in(seed, restart)
    eps = config.eps
    if kind == "noise":
        return core.random_start(x, eps, seed, config.norm), None
    if kind == "fgsm":
        return core.fgsm(logits_fn, x, y, eps, loss=loss), None
    if kind == "fgsm_rs":
        return core.fgsm_rs(logits_fn, x, y, eps, seed=seed, loss=loss), None
    if kind == "pgd":
        return core.pgd(logits_fn, x, y, eps, steps=steps, step_size=config.step_size, seed=seed,
                        norm=config.norm, loss=loss), None
    # APGD's random start differs from PGD's of the same restart index, and CE's from DLR's: in
    # `strong` the three would otherwise all start from one point.
    seed = tf.random.experimental.stateless_fold_in(seed, {"ce": 1, "dlr": 2}[loss])
    return core.apgd(logits_fn, x, y, eps, steps=steps, seed=seed, loss=loss, return_fooled=True)


def perturb(logits_fn, x, y, config, run, seed):
    """The perturbed batch of one run of an `AttackConfig`."""
    return _run(logits_fn, x, y, config, run, seed)[0]


def robust_correct(logits_fn, x, y, config, seed):
    """`[B]` bool: correct on the clean batch and under every run of `config`.

    APGD runs also count an example as fooled if any of their iterates misclassified it
    (AutoAttack's bookkeeping); PGD is scored at its returned point, as the paper's protocol.
    """
    y = tf.cast(y, tf.int32)
    correct = tf.equal(tf.argmax(logits_fn(x), -1, output_type=tf.int32), y)
    # No shortcut at eps = 0: the attack runs, and "RA(0) == SA" checks the machinery.
    for run in config.runs():
        x_adv, fooled = _run(logits_fn, x, y, config, run, seed)
        correct = tf.logical_and(correct, tf.equal(tf.argmax(logits_fn(x_adv), -1, output_type=tf.int32), y))
        if fooled is not None:
            correct = tf.logical_and(correct, tf.logical_not(fooled))
    return correct


def support_robust_correct(finetuned_logits_fn, support_x, query_x, query_y, config, seed):
    """`[Q]` bool: query correct after fine-tuning on the clean support *and* on an attacked one.

    The attack perturbs the support set before fine-tuning to maximise the query loss after
    it, differentiating through the unrolled fine-tuning (`finetuned_logits_fn(support_x)`
    must return the query logits after fine-tuning on `support_x`, differentiably).
    Each restart is its own run; a query counts as robust only if it survives all.
    """
    query_y = tf.cast(query_y, tf.int32)

    def query_correct(xs):
        return tf.equal(tf.argmax(finetuned_logits_fn(xs), -1, output_type=tf.int32), query_y)

    def query_loss(xs):
        return tf.reduce_sum(core.per_example_loss(finetuned_logits_fn(xs), query_y, "ce"))

    correct = query_correct(support_x)
    fgsm = config.name == "fgsm"
    for restart in range(config.restarts):
        x_adv = core.maximize(
            query_loss, support_x, config.eps, steps=1 if fgsm else config.steps,
            step_size=config.eps if fgsm else config.step_size, rand_init=not fgsm,
            seed=tf.random.experimental.stateless_fold_in(seed, 1000 + restart), norm=config.norm,
        )
        correct = tf.logical_and(correct, query_correct(x_adv))
    return correct
