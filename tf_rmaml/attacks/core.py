"""White-box attacks on images in [0, 1]: FGSM(-RS), PGD (L-inf, L2), TRADES-KL, APGD (CE, DLR).

Every attack is a pure function of a `logits_fn` (images -> logits), the inputs, the labels (or
the clean predictions, for the label-free TRADES loss), the radius and an integer seed pair for
`tf.random.stateless_*`; all work inside `tf.function` and XLA. Every returned `x_adv` lies in
the eps-ball around `x` and in [0, 1].

With batch-statistics batch norm (the paper's setting) an example's logits depend on the whole
batch, so attacks perturb and score the batch as a whole. Restarts are therefore *not* merged
here into one batch; each restart's `x_adv` is returned and the evaluator counts an example as
robust only if it survives every restart (see `tf_rmaml/attacks/evaluation.py`).
"""

import tensorflow as tf

LOSSES = ("ce", "dlr", "kl")


def per_example_loss(logits, target, loss="ce"):
    """Per-example loss to *maximise*.

    Args:
      logits: `[B, C]`.
      target: `[B]` int labels for "ce"/"dlr"; `[B, C]` clean probabilities for "kl".
      loss: "ce" (cross-entropy), "dlr" (Croce & Hein's difference of logits ratio, C >= 3),
        or "kl" (KL(clean || adversarial), the TRADES attack).
    """
    if loss == "ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(target, tf.int32), logits=logits)
    if loss == "kl":
        log_q = tf.nn.log_softmax(logits)
        p = target
        return tf.reduce_sum(p * (tf.math.log(tf.maximum(p, 1e-12)) - log_q), axis=-1)
    if loss == "dlr":
        sorted_logits = tf.sort(logits, axis=-1, direction="DESCENDING")
        y = tf.cast(target, tf.int32)
        z_y = tf.gather(logits, y, batch_dims=1)
        top = sorted_logits[:, 0]
        # Largest logit among the other classes.
        z_other = tf.where(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), y), sorted_logits[:, 1], top)
        denom = sorted_logits[:, 0] - sorted_logits[:, 2] + 1e-12
        return -(z_y - z_other) / denom
    raise ValueError(f"Unknown attack loss {loss!r}; choose one of {LOSSES}.")


def project(x_adv, x, eps, norm="linf"):
    """Projects `x_adv` onto the eps-ball around `x` (L-inf or L2, per example) and [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = tf.clip_by_value(delta, -eps, eps)
    elif norm == "l2":
        axes = list(range(1, len(x.shape)))
        norms = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=axes, keepdims=True) + 1e-24)
        delta = delta * tf.minimum(1.0, eps / norms)
    else:
        raise ValueError(f"Unknown norm {norm!r}; use 'linf' or 'l2'.")
    return tf.clip_by_value(x + delta, 0.0, 1.0)


def random_start(x, eps, seed, norm="linf"):
    """A uniform point of the eps-ball around `x` (L-inf), or a uniform direction and radius (L2)."""
    if norm == "linf":
        delta = tf.random.stateless_uniform(tf.shape(x), seed, -eps, eps, dtype=x.dtype)
    else:
        axes = list(range(1, len(x.shape)))
        g = tf.random.stateless_normal(tf.shape(x), seed, dtype=x.dtype)
        g = g / tf.sqrt(tf.reduce_sum(tf.square(g), axis=axes, keepdims=True) + 1e-24)
        r = tf.random.stateless_uniform(tf.concat([tf.shape(x)[:1], tf.ones([len(axes)], tf.int32)], 0),
                                        tf.random.experimental.stateless_fold_in(seed, 1), dtype=x.dtype)
        delta = g * eps * r
    return project(x + delta, x, eps, norm)


def _gradient(logits_fn, x_adv, target, loss):
    with tf.GradientTape() as tape:
        tape.watch(x_adv)
        logits = logits_fn(x_adv)
        losses = per_example_loss(logits, target, loss)
        total = tf.reduce_sum(losses)
    return tape.gradient(total, x_adv), losses, logits


def ascent_direction(grad, norm):
    if norm == "linf":
        return tf.sign(grad)
    axes = list(range(1, len(grad.shape)))
    return grad / (tf.sqrt(tf.reduce_sum(tf.square(grad), axis=axes, keepdims=True)) + 1e-12)


def fgsm(logits_fn, x, target, eps, *, seed=None, rand_init=False, step_size=None, loss="ce"):
    """FGSM, or FGSM with random start (Wong et al. 2020).

    Args:
      logits_fn: images `[B, H, W, C]` -> logits `[B, classes]`.
      x: clean images in [0, 1].
      target: labels `[B]` (or clean probabilities for loss="kl").
      eps: L-inf radius.
      seed: int32 `[2]` stateless seed (needed with random start).
      rand_init: start from a uniform point of the ball (FGSM-RS).
      step_size: default eps (plain FGSM) or 1.25 eps (FGSM-RS, Wong et al.).
      loss: see `per_example_loss`.
    """
    if step_size is None:
        step_size = 1.25 * eps if rand_init else eps
    x_adv = random_start(x, eps, seed) if rand_init else x
    grad, _, _ = _gradient(logits_fn, x_adv, target, loss)
    return project(x_adv + step_size * tf.sign(grad), x, eps)


def fgsm_rs(logits_fn, x, target, eps, *, seed, step_size=None, loss="ce"):
    """FGSM with random start: uniform start in the ball, one signed step of 1.25 eps."""
    return fgsm(logits_fn, x, target, eps, seed=seed, rand_init=True, step_size=step_size, loss=loss)


def maximize(loss_fn, x, eps, *, steps, step_size, seed=None, rand_init=True, norm="linf"):
    """Projected gradient ascent of a scalar `loss_fn(x_adv)` over the eps-ball around `x` and [0, 1].

    Returns the iterate with the highest loss seen (the last one is not always the best when
    the step size is large).
    """
    x_adv = random_start(x, eps, seed, norm) if rand_init else tf.identity(x)
    best, best_loss = x_adv, tf.constant(-float("inf"), x.dtype)
    # tf.range loop: no second order is needed through the attack, and the graph stays small.
    for _ in tf.range(steps):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            loss = loss_fn(x_adv)
        grad = tape.gradient(loss, x_adv)
        better = loss > best_loss
        best = tf.where(better, x_adv, best)
        best_loss = tf.where(better, loss, best_loss)
        x_adv = project(x_adv + step_size * ascent_direction(grad, norm), x, eps, norm)
    return tf.where(loss_fn(x_adv) >= best_loss, x_adv, best)


def pgd(logits_fn, x, target, eps, *, steps, step_size, seed=None, rand_init=True, norm="linf", loss="ce"):
    """Projected gradient ascent (Madry et al.) on the summed per-example loss, one restart."""

    def batch_loss(x_adv):
        return tf.reduce_sum(per_example_loss(logits_fn(x_adv), target, loss))

    return maximize(batch_loss, x, eps, steps=steps, step_size=step_size, seed=seed, rand_init=rand_init, norm=norm)


def trades_attack(logits_fn, x, eps, *, seed, steps=1, step_size=None, clean_probs=None):
    """The TRADES inner maximisation: max KL(f(x) || f(x + delta)) over the L-inf ball.

    `steps=1` is FGSM-RS on the KL (the paper's training attack: step 1.25 eps);
    more steps run PGD from a random start (default step 2.5 eps / steps).
    """
    if clean_probs is None:
        clean_probs = tf.stop_gradient(tf.nn.softmax(logits_fn(x)))
    if steps == 1:
        return fgsm_rs(logits_fn, x, clean_probs, eps, seed=seed, step_size=step_size, loss="kl")
    step_size = 2.5 * eps / steps if step_size is None else step_size
    return pgd(logits_fn, x, clean_probs, eps, steps=steps, step_size=step_size, seed=seed, loss="kl")


def apgd(logits_fn, x, target, eps, *, steps=100, seed=None, loss="ce", rho=0.75, alpha=0.75, return_fooled=False):
    """APGD (Croce & Hein, 2020), L-inf, one restart, with a step size per example.

    Each example's step size starts at 2 eps and is halved at checkpoints w_j (p_0 = 0,
    p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) when, since the last checkpoint,
    its loss rose in fewer than a fraction `rho` of the steps, or its step size was not reduced
    and its best loss did not improve; after a halving the example restarts from its best point.
    Momentum `alpha` = 0.75 mixes the projected step with the previous displacement. Returns
    each example's best point (highest loss seen).

    With batch-statistics batch norm an example's loss depends on the rest of the batch, so the
    returned batch of per-example best points need not have been evaluated as a whole; the
    evaluator scores it on its own. With `return_fooled` (labels only) also returns `[B]` bool:
    the example was misclassified at some iterate. Every iterate is a valid perturbed batch, so,
    as AutoAttack does, an example fooled at any of them is not robust.
    """
    steps = int(steps)
    # Checkpoints of the step-size schedule.
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    checkpoints = tf.constant(sorted({int(round(q * steps)) for q in p if 0 < q <= 1.0}), tf.int32)

    def per_image(v):  # [B] -> [B, 1, ..., 1], to scale or select whole images
        return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([tf.rank(x) - 1], tf.int32)], 0))

    x0 = random_start(x, eps, seed) if seed is not None else tf.identity(x)
    grad, f0, logits0 = _gradient(logits_fn, x0, target, loss)
    eta = tf.fill(tf.shape(f0), tf.constant(2.0 * eps, x.dtype))
    x1 = project(x0 + per_image(eta) * tf.sign(grad), x, eps)
    grad1, f1, logits1 = _gradient(logits_fn, x1, target, loss)
    labels = tf.cast(target, tf.int32) if loss != "kl" else None

    def wrong(logits):
        if labels is None:
            return tf.zeros(tf.shape(logits)[:1], tf.bool)
        return tf.not_equal(tf.argmax(logits, -1, output_type=tf.int32), labels)

    fooled = tf.logical_or(wrong(logits0), wrong(logits1))
    better = per_image(f1 >= f0)
    x_best = tf.where(better, x1, x0)
    f_best = tf.maximum(f1, f0)
    g_best = tf.where(better, grad1, grad)
    x_prev, x_cur, g_cur, f_cur = x0, x1, grad1, f1
    successes = tf.cast(f1 > f0, x.dtype)
    last_check, f_best_at_check, eta_at_check = tf.constant(0, tf.int32), f_best, eta
    # A graph loop (tf.range), not an unrolled one: 100-step attacks otherwise take minutes to trace.
    for k in tf.range(1, steps):
        z = project(x_cur + per_image(eta) * tf.sign(g_cur), x, eps)
        x_next = project(x_cur + alpha * (z - x_cur) + (1.0 - alpha) * (x_cur - x_prev), x, eps)
        g_next, f_next, logits_next = _gradient(logits_fn, x_next, target, loss)
        fooled = tf.logical_or(fooled, wrong(logits_next))
        successes += tf.cast(f_next > f_cur, x.dtype)
        improved = per_image(f_next > f_best)
        x_best = tf.where(improved, x_next, x_best)
        g_best = tf.where(improved, g_next, g_best)
        f_best = tf.maximum(f_best, f_next)
        x_prev, x_cur, g_cur, f_cur = x_cur, x_next, g_next, f_next
        # At a checkpoint, per example: halve the step if too few steps raised the loss, or if
        # neither the step nor the best loss changed since the last checkpoint; then restart
        # that example from its best point.
        at_check = tf.reduce_any(tf.equal(k, checkpoints))
        window = tf.cast(k - last_check, x.dtype)
        cond1 = successes < rho * window
        cond2 = tf.logical_and(tf.equal(eta, eta_at_check), tf.equal(f_best, f_best_at_check))
        halve = tf.logical_and(at_check, tf.logical_or(cond1, cond2))
        eta_at_check = tf.where(at_check, eta, eta_at_check)
        eta = tf.where(halve, eta / 2.0, eta)
        x_cur = tf.where(per_image(halve), x_best, x_cur)
        g_cur = tf.where(per_image(halve), g_best, g_cur)
        successes = tf.where(at_check, tf.zeros_like(successes), successes)
        last_check = tf.where(at_check, k, last_check)
        f_best_at_check = tf.where(at_check, f_best, f_best_at_check)
    return (x_best, fooled) if return_fooled else x_best
