"""N-way K-shot episodes as pure functions of `(seed, split, index)`.

An episode draws `ways` classes without replacement, then `shots + queries` distinct
images of each class; support and query never share an image. Label `j` is the j-th
drawn class, and since the classes are drawn in random order the class-to-label map
is a fresh random permutation for every task. Support and query are class-major.

Everything here is TensorFlow ops on stateless RNG, so the same episode comes out
eagerly, inside `tf.function` and inside `tf.data`, in every run: resuming training
needs only the step counter, and test tasks are the same for every model.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tf_rmaml.data.errors import DataError

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
    ways: int
    shots: int
    queries: int

    def check(self, num_classes, per_class, split):
        """Raises ValueError when the split cannot hold such an episode."""
        for name in ("ways", "shots", "queries"):
            if getattr(self, name) < 1:
                raise DataError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.ways > num_classes:
            raise DataError(
                f"--ways={self.ways} is more than the {num_classes} classes of the {split!r} split; "
                f"use --ways <= {num_classes}."
            )
        if self.shots + self.queries > per_class:
            raise DataError(
                f"--shots={self.shots} plus --queries={self.queries} is more than the {per_class} "
                f"images per class of the {split!r} split; lower them so shots + queries <= {per_class}."
            )


def episode_seed(seed, split, index):
    """The stateless RNG seed (int32 [2]) of episode `index` of `split`."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(SPLIT_IDS[split], tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def _first_k_of_permutation(seed, rows, n, k):
    """`[rows, k]` int32: the first k entries of independent random permutations of range(n)."""
    keys = tf.random.stateless_uniform([rows, n], seed=seed)
    return tf.math.top_k(keys, k=k, sorted=True).indices


def episode_indices(seed, split, index, num_classes, per_class, spec):
    """Which images make up an episode.

    Returns:
      `classes`: `[ways]` int32 class ids, and `images`: `[ways, shots + queries]`
      int32 image ids within each class (first `shots` are the support).
    """
    s = episode_seed(seed, split, index)
    class_seed, image_seed = tf.unstack(tf.random.experimental.stateless_split(s, 2))
    classes = _first_k_of_permutation(class_seed, 1, num_classes, spec.ways)[0]
    images = _first_k_of_permutation(image_seed, spec.ways, per_class, spec.shots + spec.queries)
    return classes, images


def make_episode(images, classes, image_ids, spec):
    """Gathers an episode from `images` (uint8 `[C, P, H, W, ch]`, tensor or variable).

    Returns a dict of `support_x` `[ways*shots, H, W, ch]` float32 in [0, 1],
    `support_y` `[ways*shots]` int32, `query_x` `[ways*queries, H, W, ch]`,
    `query_y` `[ways*queries]` int32, and `classes` `[ways]` (global class ids).
    """
    idx = tf.stack([tf.repeat(classes[:, None], tf.shape(image_ids)[1], axis=1), image_ids], axis=-1)
    # A multiply, not a divide: graph rewriting turns x / 255 into x * (1 / 255), and eager
    # and graph episodes should agree to the bit.
    x = tf.cast(tf.gather_nd(images, idx), tf.float32) * (1.0 / 255.0)  # [ways, shots+queries, H, W, ch]
    labels = tf.repeat(tf.range(spec.ways, dtype=tf.int32)[:, None], spec.shots + spec.queries, axis=1)
    image_shape = tf.shape(x)[2:]

    def images_of(part):
        return tf.reshape(part, tf.concat([[-1], image_shape], 0))

    k = spec.shots
    return {
        "support_x": images_of(x[:, :k]),
        "support_y": tf.reshape(labels[:, :k], [-1]),
        "query_x": images_of(x[:, k:]),
        "query_y": tf.reshape(labels[:, k:], [-1]),
        "classes": classes,
    }


class EpisodeSource:
    """Episodes of one split of a dataset.

    Args:
      images: uint8 `[num_classes, per_class, H, W, ch]` (a `SplitData.images`).
      split: "train", "val" or "test" (part of every episode's seed).
      spec: the `EpisodeSpec`.
      seed: the run's integer seed.

    Example:
      source = EpisodeSource(data.images, "train", EpisodeSpec(5, 1, 15), seed=0)
      ep = source.episode(7)                       # eager, one task
      ds = source.dataset(start=0, stop=1000, tasks_per_element=4)  # meta-batches
    """

    def __init__(self, images, split, spec, seed):
        if split not in SPLIT_IDS:
            raise DataError(f"Unknown split {split!r}; use one of {sorted(SPLIT_IDS)}.")
        images = np.asarray(images)
        if images.ndim != 5 or images.dtype != np.uint8:
            raise DataError(
                f"images must be uint8 [classes, per_class, H, W, C], got {images.dtype} {images.shape}."
            )
        self.num_classes, self.per_class = int(images.shape[0]), int(images.shape[1])
        spec.check(self.num_classes, self.per_class, split)
        self.split, self.spec, self.seed = split, spec, int(seed)
        self.image_shape = tuple(int(d) for d in images.shape[2:])
        with tf.device("/cpu:0"):
            # A variable, not a constant: tf.data then captures a handle, not 1 GB of graph.
            self._images = tf.Variable(images, trainable=False, name=f"{split}_images")

    def indices(self, index):
        return episode_indices(self.seed, self.split, index, self.num_classes, self.per_class, self.spec)

    def episode(self, index):
        """The episode with this index (a dict, see `make_episode`)."""
        classes, ids = self.indices(index)
        return make_episode(self._images, classes, ids, self.spec)

    def dataset(self, start, stop, tasks_per_element=None, prefetch=2):
        """Episodes `start, ..., stop - 1` as a `tf.data.Dataset`.

        With `tasks_per_element=B`, element `i` stacks episodes `start + i*B ... + B - 1`
        (a meta-batch; `stop - start` must be a multiple of B).
        """
        ds = tf.data.Dataset.range(start, stop).map(self.episode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if tasks_per_element:
            ds = ds.batch(tasks_per_element, drop_remainder=True)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options).prefetch(prefetch)
