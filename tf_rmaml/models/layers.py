"""Layers whose second derivatives are exact, as MAML's meta-gradient needs.

Two stock Keras layers are wrong at second order (measured against float64 central
finite differences):

* `keras.layers.BatchNormalization` computes its batch moments with `tf.nn.moments`,
  which stops the gradient of the mean inside the variance. First derivatives are
  right; derivatives of the inner-loop gradient (MAML's second-order term) were off
  by 45-172%. `MetaBatchNorm` computes the moments with plain ops.
* `keras.layers.MaxPool2D` under XLA: XLA selects the maximum after rounding to
  bfloat16 in the gradient-of-gradient and has no float64 kernel (error 1.9e-2).
  `MaxPool` takes the maximum with `reduce_max` / `maximum`, exact in every mode.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tf_rmaml")
class MetaBatchNorm(keras.layers.BatchNormalization):
    """Batch normalization with exact second-order gradients.

    In training mode (the default for all of MAML, as in the paper's code) it
    normalises with the statistics of the batch it is given, and differentiates
    through both moments. The moving statistics are still updated, for inference
    with `training=False` (through `stateless_call` they come back as new
    non-trainable values and are only stored when the caller assigns them).
    """

    def __init__(self, momentum=0.9, epsilon=1e-5, **kwargs):
        super().__init__(momentum=momentum, epsilon=epsilon, **kwargs)

    def _moments(self, inputs, mask):
        if mask is not None:
            return super()._moments(inputs, mask)
        mean = ops.mean(inputs, axis=self._reduction_axes, keepdims=True)
        # No stop_gradient on `mean` here: that is the whole point of this class.
        variance = ops.mean(ops.square(inputs - mean), axis=self._reduction_axes, keepdims=True)
        return ops.squeeze(mean), ops.squeeze(variance)


@keras.saving.register_keras_serializable(package="tf_rmaml")
class MaxPool(keras.layers.Layer):
    """2x2 max-pooling with stride 2 or 1, "valid" padding (floor), NHWC.

    Matches `torch.nn.MaxPool2d(2, stride)`: odd sizes drop the last row/column at
    stride 2. Exact at second order under XLA, unlike `MaxPool2D`.
    """

    def __init__(self, strides=2, **kwargs):
        super().__init__(**kwargs)
        if strides not in (1, 2):
            raise ValueError(f"MaxPool supports strides 1 or 2, got {strides!r}.")
        self.strides = strides

    def call(self, x):
        if self.strides == 1:
            top = ops.maximum(x[:, :-1, :-1, :], x[:, :-1, 1:, :])
            bottom = ops.maximum(x[:, 1:, :-1, :], x[:, 1:, 1:, :])
            return ops.maximum(top, bottom)
        h, w, c = x.shape[1] // 2, x.shape[2] // 2, x.shape[3]
        x = x[:, : 2 * h, : 2 * w, :]
        x = ops.reshape(x, (-1, h, 2, w, 2, c))
        return ops.max(x, axis=(2, 4))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        if self.strides == 1:
            return (n, h - 1, w - 1, c)
        return (n, h // 2, w // 2, c)

    def get_config(self):
        return {**super().get_config(), "strides": self.strides}
