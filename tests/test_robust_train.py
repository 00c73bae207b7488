"""Every method trains from its flag file on real data (smoke); the unlabeled sampler draws
from the right classes; bad robust flags are one clear error."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from test_train_cli import REPO, SMOKE, _cli, needs_data

from tf_rmaml.data.episodes import EpisodeSource, EpisodeSpec, UnlabeledSpec
from tf_rmaml.data.errors import DataError

METHOD_FILES = sorted(
    f for f in glob.glob(os.path.join(REPO, "flags", "omniglot_*_5w1s_cpu.flags")) if "_maml_" not in f
) + [os.path.join(REPO, "flags", "cifar_fs_rmaml_out_trades_unlabeled_5w1s_cpu.flags")]
TINY = ["--max_steps=2", "--eval_every=0", "--checkpoint_every=2", "--filters=8", "--meta_batch=2", "--log_every=1",
        "--inner_steps=1"]


def test_every_method_has_its_flag_files():
    methods = {"rmaml_out_at_fgsm", "rmaml_out_at_pgd", "rmaml_both_at", "rmaml_out_trades",
               "rmaml_out_trades_unlabeled", "adml", "aq", "rmaml_out_at_fgsm_head"}
    for prefix in ("omniglot", "cifar_fs", "miniimagenet"):
        for method in methods:
            assert glob.glob(os.path.join(REPO, "flags", f"{prefix}_{method}_5w1s*.flags")), (prefix, method)


@needs_data
@pytest.mark.parametrize("flagfile", METHOD_FILES, ids=os.path.basename)
def test_method_trains_from_its_flag_file(flagfile, tmp_path):
    train_dir = str(tmp_path / "run")
    _cli("train", f"--flagfile={flagfile}", f"--train_dir={train_dir}", *TINY)
    with open(os.path.join(train_dir, "config.json")) as f:
        config = json.load(f)
    with open(flagfile) as f:
        method = [line.split("=", 1)[1].strip() for line in f if line.startswith("--method=")][0]
    assert config["robust"]["method"] == method
    assert tf.train.latest_checkpoint(os.path.join(train_dir, "checkpoints")).endswith("-2")


def _labelled_images(classes=12, per_class=10):
    """uint8 images whose pixels encode (class, index): value = class * per_class + index."""
    values = np.arange(classes * per_class, dtype=np.uint8).reshape(classes, per_class, 1, 1, 1)
    return np.broadcast_to(values, (classes, per_class, 4, 4, 1)).copy()


@pytest.mark.parametrize("which", ["task", "other"])
def test_unlabeled_images_come_from_the_tasks_global_classes_or_explicitly_others(which):
    per_class, spec = 10, EpisodeSpec(3, 1, 2)
    source = EpisodeSource(_labelled_images(per_class=per_class), "train", spec, seed=1,
                           unlabeled=UnlabeledSpec(per_class=4, classes=which))
    for index in range(20):
        ep = source.episode(index)
        ids = np.rint(ep["unlabeled_x"].numpy()[:, 0, 0, 0] * 255).astype(int)
        u_classes, u_images = ids // per_class, ids % per_class
        task_classes = ep["classes"].numpy()
        episode_ids = np.rint(np.concatenate([ep["support_x"], ep["query_x"]])[:, 0, 0, 0] * 255).astype(int)
        assert len(ids) == 3 * 4 and len(set(ids)) == len(ids)
        if which == "task":
            # Four of each task class (global ids, not the task's labels 0..2), none from the episode.
            assert sorted(u_classes) == sorted(np.repeat(task_classes, 4))
            assert not set(ids) & set(episode_ids)
        else:
            assert not set(u_classes) & set(task_classes) and len(set(u_classes)) == 3
        np.testing.assert_array_equal(ep["unlabeled_classes"].numpy(), u_classes)
        del u_images


def test_other_classes_skip_the_rotations_of_the_task_characters():
    """With --omniglot_rotations a character is 4 classes (4c..4c+3): "other" must not draw a rotated
    copy of a task character, whose images are the episode's own images turned."""
    from tf_rmaml.data.omniglot import character_groups, rotate_classes

    _, names = rotate_classes(np.zeros((6, 1, 2, 2, 1), np.uint8), [f"Alpha/character{c:02d}" for c in range(6)])
    groups = character_groups(names)
    np.testing.assert_array_equal(groups, np.arange(24) // 4)
    np.testing.assert_array_equal(character_groups(["a/x", "a/y", "b/x"]), [0, 1, 2])
    per_class = 10
    source = EpisodeSource(_labelled_images(classes=24, per_class=per_class), "train", EpisodeSpec(3, 1, 2), seed=2,
                           unlabeled=UnlabeledSpec(per_class=2, classes="other", groups=groups))
    for index in range(30):
        ep = source.episode(index)
        u_classes = ep["unlabeled_classes"].numpy()
        assert not set(groups[u_classes]) & set(groups[ep["classes"].numpy()])
    with pytest.raises(DataError, match="counting the rotations"):
        EpisodeSource(_labelled_images(classes=24), "train", EpisodeSpec(3, 1, 2), 0,
                      UnlabeledSpec(per_class=2, classes="other", groups=np.arange(24) // 5))


def test_unlabeled_pool_and_bad_requests():
    images = _labelled_images()
    pool = np.full((30, 4, 4, 1), 200, np.uint8)
    ep = EpisodeSource(images, "train", EpisodeSpec(3, 1, 2), 0, UnlabeledSpec(per_class=5, pool=pool)).episode(0)
    assert ep["unlabeled_x"].shape == (15, 4, 4, 1) and np.allclose(ep["unlabeled_x"], 200 / 255)
    with pytest.raises(DataError, match="images per class left"):
        EpisodeSource(images, "train", EpisodeSpec(3, 1, 2), 0, UnlabeledSpec(per_class=8))
    with pytest.raises(DataError, match="like the dataset's"):
        EpisodeSource(images, "train", EpisodeSpec(3, 1, 2), 0, UnlabeledSpec(pool=np.zeros((40, 5, 5, 1), np.uint8)))


@needs_data
@pytest.mark.parametrize("args,message", [
    (["--unlabeled_source=split"], "--unlabeled_source needs --regularizer=trades"),
    (["--method=rmaml_out", "--train_eps=3"], "--train_eps must be in [0, 1]"),
    (["--method=aq", "--regularizer=trades"], "--regularizer=at"),
    (["--method=rmaml_out", "--regularizer=trades", "--unlabeled_source=/nonexistent.npz"], "no such file"),
])
def test_bad_robust_flags_give_one_clear_error(tmp_path, args, message):
    proc = _cli("train", f"--flagfile={SMOKE}", f"--train_dir={tmp_path / 'run'}", *args, check=False, timeout=300)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
