"""Augmented views for the contrastive task, built for the image type.

RGB: random resized crop, horizontal flip, color jitter (brightness, contrast, saturation, hue)
and random grayscale. 1-channel (Omniglot): a random resized crop and a small affine (rotation,
translation), no color operations (color layers fail on one channel, and strokes have no color).

`backend="keras"` (default) uses Keras core preprocessing layers; `backend="keras_cv"` uses
keras-cv 0.9 (`pip install tf-rmaml[cv]`; RGB only: its color layers need three channels, and for
one channel the Keras pipeline is used). Both run eagerly, inside `tf.function` and inside
`tf.data.Dataset.map`, keep shapes, and keep values in [0, 1].
"""

import keras
import tensorflow as tf

from tf_rmaml.errors import ConfigError

BACKENDS = ("keras", "keras_cv")


def _keras_layers(channels, seed):
    layers = [
        # Zooming in by up to 40% of the side and shifting: a random resized crop at the input size.
        keras.layers.RandomZoom(height_factor=(-0.4, 0.0), width_factor=(-0.4, 0.0), fill_mode="reflect", seed=seed),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="reflect", seed=seed + 1),
    ]
    if channels == 1:
        layers.append(keras.layers.RandomRotation(0.05, fill_mode="constant", fill_value=0.0, seed=seed + 2))
        return layers
    return layers + [
        keras.layers.RandomFlip("horizontal", seed=seed + 2),
        keras.layers.RandomColorJitter(value_range=(0, 1), brightness_factor=0.4, contrast_factor=0.4,
                                       saturation_factor=(0.1, 0.9), hue_factor=0.1, seed=seed + 3),
        keras.layers.RandomGrayscale(factor=0.2, seed=seed + 4),
    ]


def _keras_cv_layers(image_shape, seed):
    try:
        import keras_cv
    except ImportError:
        raise ConfigError("--augment_backend=keras_cv needs keras-cv: pip install 'tf-rmaml[cv]'.") from None
    height, width = image_shape[:2]
    return [
        keras_cv.layers.RandomCropAndResize((height, width), crop_area_factor=(0.6, 1.0),
                                            aspect_ratio_factor=(0.75, 1.33), seed=seed),
        keras_cv.layers.RandomFlip("horizontal", seed=seed + 1),
        keras_cv.layers.RandomColorJitter(value_range=(0, 1), brightness_factor=0.4, contrast_factor=0.4,
                                          saturation_factor=(0.1, 0.9), hue_factor=0.1, seed=seed + 2),
        keras_cv.layers.RandomApply(keras_cv.layers.Grayscale(output_channels=3), rate=0.2, seed=seed + 3),
    ]


class Augmenter:
    """`augmenter(images [B, H, W, C] in [0, 1])` -> augmented images, same shape, in [0, 1].

    `state()` lists the random-generator state of its layers (variables and `tf.random.Generator`s),
    to checkpoint with the run so that a resumed run draws the same views.
    """

    def __init__(self, layers):
        self.layers = layers

    def __call__(self, images):
        x = images
        for layer in self.layers:
            x = layer(x, training=True)
        return tf.clip_by_value(tf.cast(x, images.dtype), 0.0, 1.0)

    def state(self):
        out = []
        for layer in self.layers:
            out += [v.value if hasattr(v, "value") else v for v in layer.variables]
            generator = getattr(layer, "_random_generator", None)
            if isinstance(generator, tf.random.Generator):
                out.append(generator)
        return out


def make_augmenter(image_shape, backend="keras", seed=0):
    """An `Augmenter` for images of `image_shape` (see the module docstring)."""
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown --augment_backend {backend!r}. Choose one of: {', '.join(BACKENDS)}.")
    channels = int(image_shape[-1])
    if channels not in (1, 3):
        raise ConfigError(f"Augmentations support 1- or 3-channel images, got {channels} channels.")
    if backend == "keras_cv" and channels == 3:
        layers = _keras_cv_layers(image_shape, seed)
    else:
        layers = _keras_layers(channels, seed)
    return Augmenter(layers)


def nt_xent(z1, z2, temperature=0.5):
    """NT-Xent (SimCLR) over a batch of positive pairs `(z1[i], z2[i])`.

    Cosine similarities divided by `temperature`; each of the 2N views has its partner as the
    positive and the other 2N - 2 views as negatives; mean over the 2N views.
    """
    z = tf.math.l2_normalize(tf.concat([z1, z2], 0), axis=-1)
    n = tf.shape(z1)[0]
    sim = tf.matmul(z, z, transpose_b=True) / temperature
    sim = sim - 1e9 * tf.eye(2 * n, dtype=sim.dtype)  # a view is not its own negative
    positives = tf.concat([tf.range(n, 2 * n), tf.range(0, n)], 0)
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=positives, logits=sim))
