"""Episodes: distinct classes, no image twice, permuted labels, pure in (seed, split, index)."""

import numpy as np
import pytest
import tensorflow as tf

from tf_rmaml.data.episodes import EpisodeSource, EpisodeSpec

CLASSES, PER_CLASS = 12, 7
SPEC = EpisodeSpec(ways=5, shots=2, queries=3)


def _images():
    # Every image is unique and encodes (class, index) so episodes can be decoded.
    ids = np.arange(CLASSES * PER_CLASS).reshape(CLASSES, PER_CLASS)
    img = np.zeros((CLASSES, PER_CLASS, 2, 2, 1), np.uint8)
    img[..., 0, 0, 0] = ids // PER_CLASS
    img[..., 0, 1, 0] = ids % PER_CLASS
    return img


def _decode(x):
    x = np.rint(np.asarray(x) * 255).astype(int)
    return list(zip(x[:, 0, 0, 0], x[:, 0, 1, 0]))


@pytest.fixture(scope="module")
def source():
    return EpisodeSource(_images(), "train", SPEC, seed=7)


def test_episode_structure(source):
    for index in range(20):
        ep = {k: v.numpy() for k, v in source.episode(index).items()}
        classes = ep["classes"]
        assert len(set(classes)) == SPEC.ways
        support, query = _decode(ep["support_x"]), _decode(ep["query_x"])
        assert len(support) == SPEC.ways * SPEC.shots and len(query) == SPEC.ways * SPEC.queries
        assert len(set(support + query)) == len(support) + len(query), "an image appears twice"
        # Labels index into `classes`, class-major, and each label's images are of that class.
        for xs, ys, per in ((support, ep["support_y"], SPEC.shots), (query, ep["query_y"], SPEC.queries)):
            np.testing.assert_array_equal(ys, np.repeat(np.arange(SPEC.ways), per))
            assert all(c == classes[y] for (c, _), y in zip(xs, ys))
        assert ep["support_x"].dtype == np.float32
        assert 0.0 <= ep["support_x"].min() and ep["support_x"].max() <= 1.0


def test_labels_are_a_fresh_permutation_per_task(source):
    orders = {tuple(source.episode(i)["classes"].numpy()) for i in range(30)}
    assert len(orders) > 20
    # Class 0 gets label 0 in some tasks and other labels in others.
    labels_of_lowest = {int(np.argmin(o)) for o in orders}
    assert len(labels_of_lowest) > 1


def test_pure_function_of_seed_split_index():
    images = _images()
    a = EpisodeSource(images, "train", SPEC, seed=7)
    b = EpisodeSource(images, "train", SPEC, seed=7)
    for i in (0, 5, 123456):
        for k in ("support_x", "query_x", "classes"):
            np.testing.assert_array_equal(a.episode(i)[k], b.episode(i)[k])
    other_seed = EpisodeSource(images, "train", SPEC, seed=8)
    other_split = EpisodeSource(images, "val", SPEC, seed=7)
    same = lambda s, t: np.array_equal(s.episode(3)["query_x"], t.episode(3)["query_x"])  # noqa: E731
    assert not same(a, other_seed) and not same(a, other_split)
    assert not np.array_equal(a.episode(3)["query_x"], a.episode(4)["query_x"])


def test_eager_function_and_tf_data_agree(source):
    graph_episode = tf.function(source.episode)
    ds = source.dataset(4, 12, tasks_per_element=4)
    for b, batch in enumerate(ds):
        assert batch["support_x"].shape == (4, SPEC.ways * SPEC.shots, 2, 2, 1)
        assert batch["query_y"].dtype == tf.int32
        for t in range(4):
            index = 4 + 4 * b + t
            eager, graph = source.episode(index), graph_episode(tf.constant(index, tf.int64))
            for k in ("support_x", "support_y", "query_x", "query_y"):
                np.testing.assert_array_equal(eager[k], batch[k][t])
                np.testing.assert_array_equal(eager[k], graph[k])


@pytest.mark.parametrize(
    "spec,match",
    [(EpisodeSpec(13, 1, 1), "ways=13"), (EpisodeSpec(5, 4, 4), "shots=4 plus --queries=4"), (EpisodeSpec(5, 0, 1), "shots")],
)
def test_impossible_episodes_are_refused(spec, match):
    with pytest.raises(ValueError, match=match):
        EpisodeSource(_images(), "train", spec, seed=0)
