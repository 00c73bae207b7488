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


UNLABELED_CLASSES = ("task", "other")


@dataclasses.dataclass(frozen=True)
class UnlabeledSpec:
    """Unlabeled images added to every episode as `unlabeled_x` (for the TRADES term only).

    Attributes:
      per_class: images per task class (`ways * per_class` per task; the paper's code: 20).
      classes: with images from the split itself, "task" draws from the task's own (global)
        classes, never an image of the episode; "other" from `ways` classes not in the task.
      pool: optional uint8 `[N, H, W, ch]` of outside images (a user's folder or .npz);
        then `ways * per_class` of them are drawn per task, and `classes` does not apply.
      groups: optional int `[num_classes]`: classes of one group (the four rotations of an
        Omniglot character) count as one for "other", which then never draws a class that shares
        a group with a task class. Default: every class its own group.
    """

    per_class: int = 20
    classes: str = "task"
    pool: object = None
    groups: object = None

    def check(self, num_classes, per_class, spec, image_shape):
        if self.per_class < 1:
            raise DataError(f"--unlabeled_per_class must be >= 1, got {self.per_class}.")
        if self.pool is not None:
            pool = self.pool
            if pool.dtype != np.uint8 or pool.ndim != 4 or tuple(pool.shape[1:]) != tuple(image_shape):
                raise DataError(
                    f"Unlabeled images must be uint8 [N, {', '.join(map(str, image_shape))}] like the dataset's, "
                    f"got {pool.dtype} {pool.shape}; resize them to the dataset's image size.")
            if spec.ways * self.per_class > pool.shape[0]:
                raise DataError(f"{pool.shape[0]} unlabeled images are fewer than ways x --unlabeled_per_class = "
                                f"{spec.ways * self.per_class}; lower --unlabeled_per_class.")
            return
        if self.classes not in UNLABELED_CLASSES:
            raise DataError(f"--unlabeled_classes must be one of {', '.join(UNLABELED_CLASSES)}, got {self.classes!r}.")
        if self.classes == "task" and self.per_class > per_class - spec.shots - spec.queries:
            raise DataError(
                f"--unlabeled_per_class={self.per_class} is more than the {per_class - spec.shots - spec.queries} "
                f"images per class left after shots and queries; lower it or use --unlabeled_classes=other.")
        if self.groups is not None and np.shape(self.groups) != (num_classes,):
            raise DataError(f"Unlabeled class groups must have one entry per class ({num_classes}), "
                            f"got shape {np.shape(self.groups)}.")
        groups = num_classes if self.groups is None else len(np.unique(self.groups))
        if self.classes == "other" and (groups < 2 * spec.ways or self.per_class > per_class):
            raise DataError(
                f"--unlabeled_classes=other needs >= {2 * spec.ways} classes (counting the rotations of a character "
                f"as one) and --unlabeled_per_class <= {per_class}.")


def unlabeled_indices(seed, classes, image_ids, num_classes, per_class, unlabeled):
    """Which split images are a task's unlabeled images: `(class ids [U], image ids [U])`.

    "task": for each task class, `per_class` images of that class outside the episode.
    "other": `ways` classes outside the task's class groups (`unlabeled.groups`), `per_class`
    images each.
    """
    ways = classes.shape[0]
    class_seed, image_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if unlabeled.classes == "task":
        pool_classes = classes
        used = tf.reduce_any(tf.equal(image_ids[:, :, None], tf.range(per_class)[None, None]), axis=1)  # [ways, P]
        keys = tf.where(used, -1.0, tf.random.stateless_uniform([ways, per_class], seed=image_seed))
    else:
        groups = (tf.range(num_classes) if unlabeled.groups is None
                  else tf.constant(np.asarray(unlabeled.groups), tf.int32))
        in_task = tf.reduce_any(tf.equal(tf.gather(groups, classes)[:, None], groups[None]), axis=0)
        class_keys = tf.where(in_task, -1.0, tf.random.stateless_uniform([num_classes], seed=class_seed))
        pool_classes = tf.math.top_k(class_keys, k=ways).indices
        keys = tf.random.stateless_uniform([ways, per_class], seed=image_seed)
    ids = tf.math.top_k(keys, k=unlabeled.per_class).indices  # [ways, per_class]
    return tf.repeat(pool_classes, unlabeled.per_class), tf.reshape(ids, [-1])


class EpisodeSource:
    """Episodes of one split of a dataset.

    Args:
      images: uint8 `[num_classes, per_class, H, W, ch]` (a `SplitData.images`).
      split: "train", "val" or "test" (part of every episode's seed).
      spec: the `EpisodeSpec`.
      seed: the run's integer seed.
      unlabeled: optional `UnlabeledSpec`: episodes then carry `unlabeled_x`.

    Example:
      source = EpisodeSource(data.images, "train", EpisodeSpec(5, 1, 15), seed=0)
      ep = source.episode(7)                       # eager, one task
      ds = source.dataset(start=0, stop=1000, tasks_per_element=4)  # meta-batches
    """

    def __init__(self, images, split, spec, seed, unlabeled=None):
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
        self.unlabeled = unlabeled
        if unlabeled is not None:
            unlabeled.check(self.num_classes, self.per_class, spec, self.image_shape)
        with tf.device("/cpu:0"):
            # A variable, not a constant: tf.data then captures a handle, not 1 GB of graph.
            self._images = tf.Variable(images, trainable=False, name=f"{split}_images")
            self._pool = None
            if unlabeled is not None and unlabeled.pool is not None:
                self._pool = tf.Variable(np.asarray(unlabeled.pool), trainable=False, name=f"{split}_unlabeled")

    def indices(self, index):
        return episode_indices(self.seed, self.split, index, self.num_classes, self.per_class, self.spec)

    def episode(self, index):
        """The episode with this index (a dict, see `make_episode`)."""
        classes, ids = self.indices(index)
        episode = make_episode(self._images, classes, ids, self.spec)
        if self.unlabeled is not None:
            seed = tf.random.experimental.stateless_fold_in(episode_seed(self.seed, self.split, index), 7)
            if self._pool is not None:
                keys = tf.random.stateless_uniform([tf.shape(self._pool)[0]], seed=seed)
                picked = tf.gather(self._pool, tf.math.top_k(keys, k=self.spec.ways * self.unlabeled.per_class).indices)
            else:
                u_classes, u_ids = unlabeled_indices(seed, classes, ids, self.num_classes, self.per_class,
                                                     self.unlabeled)
                picked = tf.gather_nd(self._images, tf.stack([u_classes, u_ids], axis=-1))
                episode["unlabeled_classes"] = u_classes
            episode["unlabeled_x"] = tf.cast(picked, tf.float32) * (1.0 / 255.0)
        return episode

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
