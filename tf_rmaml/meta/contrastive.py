"""The auxiliary contrastive task in the meta-update (the paper's fourth claim; not in its code).

Design (ours, every choice a flag): a projection head (an MLP on the flattened backbone feature,
`--cl_head_dims`, default 256-128) is meta-learned in the outer loop, never fine-tuned, and is not
part of the classifier. Per task, two augmented views of each query image (and of the unlabeled
images when present) go through the *fine-tuned* backbone and the head; the NT-Xent loss
(`--cl_temperature`, default 0.5) over the pairs is added to the meta-loss as `gamma_cl` x loss
(default 0.1, the paper's value). With `--cl_views=adversarial` the second view is replaced by an
attack that maximises the NT-Xent loss at the fine-tuned weights (the training attack and eps),
as in adversarial contrastive learning (Kim et al. 2020; Jiang et al. 2020).
"""

import dataclasses

import keras
import tensorflow as tf

from tf_rmaml.attacks import core
from tf_rmaml.augment import BACKENDS, make_augmenter, nt_xent
from tf_rmaml.errors import ConfigError
from tf_rmaml.models.backbones import feature_model


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
    gamma_cl: float = 0.0  # 0: no contrastive task
    cl_temperature: float = 0.5
    cl_views: str = "clean"
    augment_backend: str = "keras"
    cl_head_dims: tuple = (256, 128)

    def __post_init__(self):
        if not self.gamma_cl >= 0:
            raise ConfigError(f"--gamma_cl must be >= 0, got {self.gamma_cl}.")
        if not self.cl_temperature > 0:
            raise ConfigError(f"--cl_temperature must be > 0, got {self.cl_temperature}.")
        if self.cl_views not in ("clean", "adversarial"):
            raise ConfigError(f"--cl_views must be clean or adversarial, got {self.cl_views!r}.")
        if self.augment_backend not in BACKENDS:
            raise ConfigError(f"Unknown --augment_backend {self.augment_backend!r}. Choose one of: {', '.join(BACKENDS)}.")
        object.__setattr__(self, "cl_head_dims", tuple(int(d) for d in self.cl_head_dims))
        if not self.cl_head_dims or min(self.cl_head_dims) < 1:
            raise ConfigError(f"--cl_head_dims must be positive integers, got {self.cl_head_dims}.")

    @property
    def enabled(self):
        return self.gamma_cl > 0


def build_head(model, dims, seed=0, dtype=None):
    """The projection head: Dense-ReLU layers then a linear layer, on `model`'s feature size."""
    size = int(model.get_layer("features").output.shape[-1])
    layers = [keras.Input((size,), dtype=dtype or model.dtype)]
    for i, d in enumerate(dims):
        last = i == len(dims) - 1
        layers.append(keras.layers.Dense(d, activation=None if last else "relu", name=f"proj{i}", dtype=dtype,
                                         kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i)))
    return keras.Sequential(layers, name="projection_head")


class ContrastiveTask:
    """NT-Xent at the fine-tuned weights, for `MetaLearner`.

    Args:
      model: the classifier (backbone + head); head: the projection head; config: `ContrastiveConfig`;
      robust: the `RobustConfig` (its training attack and eps make adversarial views).
    """

    def __init__(self, model, head, config, robust, image_shape, seed=0):
        self.model, self.head, self.config, self.robust = model, head, config, robust
        self.features = feature_model(model)
        wanted = {id(v) for v in self.features.trainable_variables}
        self.feature_index = [i for i, v in enumerate(model.trainable_variables) if id(v) in wanted]
        self.augment = make_augmenter(image_shape, config.augment_backend, seed=seed)

    def views(self, task):
        """Two augmented views of the query (and unlabeled) images; constants for the meta-gradient."""
        x = task["query_x"]
        if "unlabeled_x" in task:
            x = tf.concat([x, task["unlabeled_x"]], 0)
        return tf.stop_gradient(self.augment(x)), tf.stop_gradient(self.augment(x))

    def project(self, params, state, head_params, x):
        feats = self.features.stateless_call([params[i] for i in self.feature_index], list(state), x, training=True)[0]
        return self.head.stateless_call(list(head_params), [], feats)[0]

    def loss(self, params, state, head_params, views, seed):
        """`(gamma-free NT-Xent loss, metrics)` at weights `params` (the fine-tuned ones)."""
        v1, v2 = views
        t = self.config.cl_temperature
        if self.config.cl_views == "adversarial":
            frozen = [tf.stop_gradient(p) for p in params]
            frozen_head = [tf.stop_gradient(p) for p in head_params]
            z1 = tf.stop_gradient(self.project(frozen, state, frozen_head, v1))
            r = self.robust
            fgsm = r.train_attack == "fgsm_rs"
            v2 = tf.stop_gradient(core.maximize(
                lambda v: nt_xent(z1, self.project(frozen, state, frozen_head, v), t), v2, r.train_eps,
                steps=1 if fgsm else r.train_attack_steps,
                step_size=r.train_attack_step_size or (1.25 * r.train_eps if fgsm else 2.5 * r.train_eps / r.train_attack_steps),
                seed=seed))
        value = nt_xent(self.project(params, state, head_params, v1), self.project(params, state, head_params, v2), t)
        return value, {"cl_loss": value}
