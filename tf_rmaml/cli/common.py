"""Flags shared by the command lines, and their conversion into a frozen config.

Only modules in `tf_rmaml.cli` read FLAGS; they hand configs to the library.
"""

import os

import tensorflow as tf
from absl import app, flags, logging

from tf_rmaml.config import DATASET_NAMES, DEFAULT_BACKBONES, DataConfig, TrainConfig
from tf_rmaml.errors import ConfigError
from tf_rmaml.meta.contrastive import ContrastiveConfig
from tf_rmaml.meta.learner import MetaConfig
from tf_rmaml.meta.robust import METHODS, OUTER_UPDATES, REGULARIZERS, TRAIN_ATTACKS, RobustConfig
from tf_rmaml.models.backbones import BACKBONES, FINETUNE_MODES

FLAGS = flags.FLAGS
STRATEGIES = ("default", "mirrored", "multi_worker")


def define_data_flags():
    flags.DEFINE_enum("dataset", "omniglot", DATASET_NAMES, "Benchmark to meta-learn on.")
    flags.DEFINE_string("data_dir", None, "Folder with <dataset>/ sub-folders (default: $RMAML_DATA_DIR or ~/.rmaml/data).")
    flags.DEFINE_string("cache_dir", None, "Where prepared arrays are cached (default: $RMAML_CACHE_DIR or ~/.cache/tf_rmaml).")
    flags.DEFINE_bool("download", False, "Download missing data from the official sources (checksummed).")
    flags.DEFINE_integer("image_size", None, "Image side in pixels (default: 28 Omniglot, 32 CIFAR-FS, 84 MiniImageNet).")
    flags.DEFINE_enum("omniglot_split", "standard", ("standard", "vinyals"),
                      "standard: train/val on background alphabets, test on evaluation alphabets; vinyals: Vinyals et al. split.")
    flags.DEFINE_bool("omniglot_rotations", False, "Add 90/180/270-degree rotations as new training classes.")


def define_train_flags():
    define_data_flags()
    flags.DEFINE_integer("ways", 5, "Classes per task (N).")
    flags.DEFINE_integer("shots", 1, "Support images per class (K).")
    flags.DEFINE_integer("queries", 15, "Query images per class.")
    flags.DEFINE_integer("meta_batch", 4, "Tasks per meta-update.")
    flags.DEFINE_integer("inner_steps", 5, "Inner-loop SGD steps at meta-training.")
    flags.DEFINE_integer("inner_steps_test", 10, "Fine-tuning steps at meta-testing.")
    flags.DEFINE_float("inner_lr", 0.01, "Inner-loop (fine-tuning) learning rate.")
    flags.DEFINE_float("meta_lr", 1e-3, "Adam learning rate of the meta-update.")
    flags.DEFINE_integer("meta_lr_decay_steps", 0, "Cosine-decay --meta_lr to 0 over this many steps (0: constant).")
    flags.DEFINE_integer("max_steps", 1000, "Meta-iterations in total (a resumed run continues to this).")
    flags.DEFINE_integer("seed", 0, "Seed of the initial weights and the training episodes.")
    flags.DEFINE_integer("eval_seed", 1234, "Seed of validation/test episodes (keep fixed to compare runs).")
    flags.DEFINE_string("backbone", None, f"One of {sorted(BACKBONES)} (default: the paper's net for the dataset).")
    flags.DEFINE_integer("filters", None, "Backbone width (default: the preset's).")
    flags.DEFINE_bool("first_order", False, "First-order MAML: stop gradients through the inner-loop gradients.")
    flags.DEFINE_enum("finetune", "all", FINETUNE_MODES, "Which layers adapt in the inner loop at meta-training.")
    flags.DEFINE_enum("finetune_test", None, FINETUNE_MODES, "Which layers adapt at meta-testing (default: --finetune).")
    flags.DEFINE_bool("jit_compile", None, "Compile steps with XLA (default: on with a GPU, off on CPU where it measured slower).")
    flags.DEFINE_integer("eval_every", 500, "Meta-validate every this many steps (0: never).")
    flags.DEFINE_integer("eval_tasks", 200, "Validation tasks per meta-validation.")
    flags.DEFINE_integer("checkpoint_every", 200, "Save a checkpoint every this many steps.")
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints to keep.")
    flags.DEFINE_integer("log_every", 20, "Log and write summaries every this many steps.")
    flags.DEFINE_enum("strategy", "default", STRATEGIES,
                      "tf.distribute strategy: default (one device), mirrored (all local GPUs), multi_worker (TF_CONFIG).")
    flags.DEFINE_bool("deterministic", False, "Enable TensorFlow op determinism (bitwise-reproducible runs).")
    define_robust_flags()


def define_robust_flags():
    flags.DEFINE_enum("method", "maml", METHODS,
                      "maml; rmaml_out: robust regulariser in the meta-update only (the paper's proposal); rmaml_both: "
                      "also in the inner loop; adml: Yin et al. 2018; aq: adversarial querying (Goldblum et al.).")
    flags.DEFINE_enum("regularizer", "at", REGULARIZERS,
                      "at: adversarial cross-entropy on the query; trades: KL(f(x) || f(x+delta)) over support, query "
                      "and unlabeled images.")
    flags.DEFINE_float("gamma_out", None, "Weight of the meta-update regulariser (default: 0.2 at, 5 trades).")
    flags.DEFINE_float("gamma_in", 0.1, "Weight of the support regulariser in the inner loop (rmaml_both).")
    flags.DEFINE_enum("train_attack", "fgsm_rs", TRAIN_ATTACKS, "Attack inside meta-training: one-step FGSM with "
                      "random start (step 1.25 eps) or multi-step PGD.")
    flags.DEFINE_float("train_eps", None, "Training attack radius in [0, 1] pixel units (default 2/255).")
    flags.DEFINE_float("train_eps_255", None, "The training radius in 1/255 units (alternative to --train_eps).")
    flags.DEFINE_integer("train_attack_steps", 7, "PGD steps of the training attack (--train_attack=pgd).")
    flags.DEFINE_float("train_attack_step_size", None,
                       "Training attack step in pixel units (default: 1.25 eps FGSM-RS, 2.5 eps / steps PGD).")
    flags.DEFINE_enum("outer_update", "weighted_sum", OUTER_UPDATES,
                      "weighted_sum: one Adam on clean + gamma_out * R (the paper); two_optimizers: a second Adam at "
                      "--adv_meta_lr on R (the official code's AT update).")
    flags.DEFINE_float("adv_meta_lr", 2e-4, "Learning rate of the robust term's Adam (--outer_update=two_optimizers).")
    flags.DEFINE_string("unlabeled_source", "none",
                        "Unlabeled images for the TRADES term: none, split (images of the meta-train split), or the "
                        "path of an .npz ('images' uint8 [N,H,W,C]) or of a folder of images.")
    flags.DEFINE_enum("unlabeled_classes", "task", ("task", "other"),
                      "With --unlabeled_source=split: draw from the task's own classes (never the episode's images) "
                      "or from other classes.")
    flags.DEFINE_integer("unlabeled_per_class", 20, "Unlabeled images per task class (the paper's code: 20).")
    flags.DEFINE_float("gamma_cl", 0.0, "Weight of the auxiliary contrastive (NT-Xent) loss in the meta-update "
                       "(0: off; the paper: 0.1).")
    flags.DEFINE_float("cl_temperature", 0.5, "NT-Xent temperature.")
    flags.DEFINE_enum("cl_views", "clean", ("clean", "adversarial"),
                      "clean: two augmented views; adversarial: the second view attacked to maximise the contrastive "
                      "loss (the training attack and eps).")
    flags.DEFINE_enum("augment_backend", "keras", ("keras", "keras_cv"),
                      "Augmentations from Keras core preprocessing layers or keras-cv (pip install 'tf-rmaml[cv]').")
    flags.DEFINE_list("cl_head_dims", ["256", "128"], "Projection head widths (the last is the embedding).")


def contrastive_config_from_flags():
    try:
        dims = tuple(int(d) for d in FLAGS.cl_head_dims)
    except ValueError:
        raise ConfigError(f"--cl_head_dims must be integers separated by commas, got {','.join(FLAGS.cl_head_dims)!r}.")
    return ContrastiveConfig(gamma_cl=FLAGS.gamma_cl, cl_temperature=FLAGS.cl_temperature, cl_views=FLAGS.cl_views,
                             augment_backend=FLAGS.augment_backend, cl_head_dims=dims)


def robust_config_from_flags():
    if FLAGS.train_eps is not None and FLAGS.train_eps_255 is not None:
        raise ConfigError("Give --train_eps or --train_eps_255, not both.")
    eps = 2 / 255
    if FLAGS.train_eps_255 is not None:
        eps = FLAGS.train_eps_255 / 255
    elif FLAGS.train_eps is not None:
        eps = FLAGS.train_eps
    return RobustConfig(
        method=FLAGS.method, regularizer=FLAGS.regularizer, gamma_out=FLAGS.gamma_out, gamma_in=FLAGS.gamma_in,
        train_attack=FLAGS.train_attack, train_eps=eps, train_attack_steps=FLAGS.train_attack_steps,
        train_attack_step_size=FLAGS.train_attack_step_size, outer_update=FLAGS.outer_update,
        adv_meta_lr=FLAGS.adv_meta_lr,
    )


def resolve_jit_compile(value):
    if value is not None:
        return bool(value)
    return bool(tf.config.list_physical_devices("GPU"))


def train_config_from_flags():
    data = DataConfig(
        dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, cache_dir=FLAGS.cache_dir, ways=FLAGS.ways,
        shots=FLAGS.shots, queries=FLAGS.queries, image_size=FLAGS.image_size,
        omniglot_split=FLAGS.omniglot_split, omniglot_rotations=FLAGS.omniglot_rotations, download=FLAGS.download,
        unlabeled_source=FLAGS.unlabeled_source, unlabeled_classes=FLAGS.unlabeled_classes,
        unlabeled_per_class=FLAGS.unlabeled_per_class,
    )
    meta = MetaConfig(
        inner_steps=FLAGS.inner_steps, inner_steps_test=FLAGS.inner_steps_test, inner_lr=FLAGS.inner_lr,
        first_order=FLAGS.first_order, finetune=FLAGS.finetune, finetune_test=FLAGS.finetune_test or FLAGS.finetune,
    )
    return TrainConfig(
        data=data, meta=meta, robust=robust_config_from_flags(), contrastive=contrastive_config_from_flags(),
        backbone=FLAGS.backbone or DEFAULT_BACKBONES[FLAGS.dataset], filters=FLAGS.filters,
        meta_batch=FLAGS.meta_batch, meta_lr=FLAGS.meta_lr, meta_lr_decay_steps=FLAGS.meta_lr_decay_steps,
        max_steps=FLAGS.max_steps, seed=FLAGS.seed,
        eval_seed=FLAGS.eval_seed, jit_compile=resolve_jit_compile(FLAGS.jit_compile), eval_every=FLAGS.eval_every,
        eval_tasks=FLAGS.eval_tasks, checkpoint_every=FLAGS.checkpoint_every, keep_checkpoints=FLAGS.keep_checkpoints,
        log_every=FLAGS.log_every,
    )


def make_strategy(name):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable (cluster and task).")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.set_verbosity(logging.INFO)


def run_main(main):
    """`app.run(main)`, with user errors (bad flags, data, paths) as one line and exit code 1.

    Anything else is a bug and keeps its traceback.
    """
    from tf_rmaml.errors import USER_ERRORS

    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            logging.error("%s", e)
            raise SystemExit(f"error: {e}")

    quiet_tensorflow()
    app.run(wrapped)
