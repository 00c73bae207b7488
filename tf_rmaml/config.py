"""Frozen experiment configuration. The command lines build it; everything below takes it."""

import dataclasses
import json
import os

from tf_rmaml.data.episodes import EpisodeSpec
from tf_rmaml.errors import ConfigError
from tf_rmaml.meta.contrastive import ContrastiveConfig
from tf_rmaml.meta.learner import MetaConfig
from tf_rmaml.meta.robust import RobustConfig
from tf_rmaml.models.backbones import BACKBONES

DATASET_NAMES = ("omniglot", "cifar_fs", "miniimagenet")
DEFAULT_BACKBONES = {"omniglot": "omniglot_strided", "cifar_fs": "cifar_fs_small", "miniimagenet": "metaadv_miniimagenet"}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "omniglot"
    data_dir: str | None = None
    cache_dir: str | None = None
    ways: int = 5
    shots: int = 1
    queries: int = 15
    image_size: int | None = None
    omniglot_split: str = "standard"
    omniglot_rotations: bool = False
    download: bool = False
    unlabeled_source: str = "none"  # none | split | path to an .npz or a folder of images
    unlabeled_classes: str = "task"  # with "split": the task's own classes, or "other" classes
    unlabeled_per_class: int = 20

    def __post_init__(self):
        if self.dataset not in DATASET_NAMES:
            raise ConfigError(f"Unknown --dataset {self.dataset!r}. Choose one of: {', '.join(DATASET_NAMES)}.")
        for name in ("ways", "shots", "queries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.ways < 2:
            raise ConfigError(f"--ways must be >= 2, got {self.ways}.")
        if self.unlabeled_classes not in ("task", "other"):
            raise ConfigError(f"--unlabeled_classes must be task or other, got {self.unlabeled_classes!r}.")
        if self.unlabeled_per_class < 1:
            raise ConfigError(f"--unlabeled_per_class must be >= 1, got {self.unlabeled_per_class}.")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"--image_size must be >= 8 (or unset for the dataset default), got {self.image_size}.")

    @property
    def spec(self):
        return EpisodeSpec(self.ways, self.shots, self.queries)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    meta: MetaConfig = dataclasses.field(default_factory=MetaConfig)
    robust: RobustConfig = dataclasses.field(default_factory=RobustConfig)
    contrastive: ContrastiveConfig = dataclasses.field(default_factory=ContrastiveConfig)
    backbone: str = "omniglot_strided"
    filters: int | None = None
    meta_batch: int = 4
    meta_lr: float = 1e-3
    meta_lr_decay_steps: int = 0  # 0: constant; N: cosine decay from meta_lr to 0 over N steps
    max_steps: int = 1000
    seed: int = 0
    eval_seed: int = 1234
    jit_compile: bool = False
    eval_every: int = 500
    eval_tasks: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    log_every: int = 20

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ConfigError(f"Unknown --backbone {self.backbone!r}. Choose one of: {', '.join(sorted(BACKBONES))}.")
        positive = ("meta_batch", "max_steps", "eval_tasks", "checkpoint_every", "keep_checkpoints", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}.")
        if self.eval_every < 0:
            raise ConfigError(f"--eval_every must be >= 0 (0 disables meta-validation), got {self.eval_every}.")
        if self.meta_lr_decay_steps < 0:
            raise ConfigError(f"--meta_lr_decay_steps must be >= 0 (0: constant), got {self.meta_lr_decay_steps}.")
        if not self.meta_lr > 0:
            raise ConfigError(f"--meta_lr must be > 0, got {self.meta_lr}.")
        if self.filters is not None and self.filters < 1:
            raise ConfigError(f"--filters must be >= 1, got {self.filters}.")
        if self.data.unlabeled_source != "none" and (self.robust.method == "maml" or self.robust.regularizer != "trades"):
            raise ConfigError(
                "Unlabeled images enter only the TRADES term: --unlabeled_source needs --regularizer=trades and "
                f"a robust --method (got --method={self.robust.method} --regularizer={self.robust.regularizer}).")

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        d.setdefault("meta_lr_decay_steps", 0)
        d["data"] = DataConfig(**d["data"])
        d["meta"] = MetaConfig(**d["meta"])
        d["robust"] = RobustConfig(**d.get("robust", {}))
        d["contrastive"] = ContrastiveConfig(**d.get("contrastive", {}))
        return cls(**d)

    @classmethod
    def load(cls, train_dir):
        path = os.path.join(train_dir, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist: {train_dir!r} is not a training directory of rmaml-train "
                "(run rmaml-train --train_dir=... first, or point --train_dir at one)."
            )
        with open(path) as f:
            return cls.from_dict(json.load(f))


# Fields that may change when a run is resumed (they do not change what is learned).
RESUMABLE_CHANGES = {
    "max_steps", "eval_every", "eval_tasks", "checkpoint_every", "keep_checkpoints", "log_every", "jit_compile",
    "data.data_dir", "data.cache_dir", "data.download",
}


def config_differences(old, new):
    """Names of the fields, besides RESUMABLE_CHANGES, in which two configs differ."""

    def flat(c, prefix=""):
        out = {}
        for k, v in dataclasses.asdict(c).items() if dataclasses.is_dataclass(c) else c.items():
            if isinstance(v, dict):
                out.update(flat(v, prefix + k + "."))
            else:
                out[prefix + k] = v
        return out

    a, b = flat(old), flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
