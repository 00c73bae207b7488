"""The inner loop: SGD on fast weights through Keras 3 `stateless_call`.

Fast weights are plain tensors, never Keras variables, so the outer
`tf.GradientTape` sees the whole chain w -> w' -> query loss and the meta-gradient
is exact second order (unless `first_order`, which stops the inner gradients).
"""

import tensorflow as tf


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy. `logits`: [B, ways]; `labels`: [B] int."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)
    )


def accuracy(logits, labels):
    """Fraction of argmax predictions equal to `labels` (float32 scalar)."""
    hits = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), tf.cast(labels, tf.int32))
    return tf.reduce_mean(tf.cast(hits, tf.float32))


def forward(model, params, state, x, training=True):
    """`model` applied with explicit weights.

    Args:
      model: a built Keras model.
      params: tensors aligned with `model.trainable_variables`.
      state: tensors aligned with `model.non_trainable_variables` (BN moving stats).
      x: `[B, H, W, C]` images.
      training: True normalises with the batch's statistics (the paper's setting).

    Returns:
      `(logits, new_state)`; `new_state` holds the updated moving statistics, which
      nothing assigns unless the caller does.
    """
    return model.stateless_call(list(params), list(state), x, training=training)


def sgd_step(params, grads, lr, mask):
    """One SGD step on the masked-in tensors; the others are returned unchanged."""
    return [p - lr * g if m else p for p, g, m in zip(params, grads, mask)]


def adapt(model, params, state, x, y, *, steps, lr, mask, first_order=False, training=True, loss_fn=None):
    """Fine-tunes `params` on `(x, y)` with `steps` SGD steps.

    The Python loop unrolls the steps on purpose: the outer tape must see every step
    for the second-order meta-gradient (and XLA compiles the unrolled graph well).

    Args:
      model, params, state: as in `forward`.
      x: `[N, H, W, C]` support images in [0, 1]; y: `[N]` int labels.
      steps: number of SGD steps (Python int).
      lr: inner learning rate.
      mask: bools aligned with `params`; False tensors are not adapted.
      first_order: stop the inner gradients (FOMAML; the paper's code).
      loss_fn: optional `loss_fn(params, state, x, y) -> (loss, new_state)`
        replacing the clean cross-entropy (robust inner losses use it).

    Returns:
      `(fast_params, state, losses)` with the support loss before each step.
    """
    if loss_fn is None:

        def loss_fn(p, s, xs, ys):
            logits, s = forward(model, p, s, xs, training=training)
            return cross_entropy(logits, ys), s

    fast = list(params)
    losses = []
    for _ in range(steps):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(fast)
            loss, state = loss_fn(fast, state, x, y)
        adapt_vars = [p for p, m in zip(fast, mask) if m]
        grads = iter(tape.gradient(loss, adapt_vars, unconnected_gradients=tf.UnconnectedGradients.ZERO))
        full = [next(grads) if m else None for m in mask]
        if first_order:
            full = [None if g is None else tf.stop_gradient(g) for g in full]
        fast = sgd_step(fast, full, lr, mask)
        losses.append(loss)
    return fast, state, losses
