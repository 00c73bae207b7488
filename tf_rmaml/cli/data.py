r"""`rmaml-data`: download and prepare the few-shot datasets.

Usage:
  rmaml-data download --dataset=omniglot --data_dir=~/.rmaml/data
  rmaml-data prepare --dataset=cifar_fs --data_dir=/data [--cache_dir=C] \
      [--image_size=S]

`download` fetches the official files that are missing (Omniglot zips, the
CIFAR-100 archive) into `<data_dir>/<dataset>/`, then prepares every split.
`prepare` only uses local files (no network) and builds the caches /
CIFAR-FS npz files. Both log a `classes x images` summary per split.
MiniImageNet cannot be downloaded: put its files in place (the error says
where) and run `prepare`.
"""

from absl import app, flags, logging

from tf_rmaml.data import sources
from tf_rmaml.data.errors import DataError

ACTIONS = ("download", "prepare")
FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """Defines this tool's flags.

    Called from `run()`, not at import, so importing this module next to the
    training CLI (which has its own --dataset / --data_dir) cannot clash.
    """
    flags.DEFINE_enum("dataset", None, sources.DATASETS, "Dataset to fetch "
                      "or prepare.", flag_values=flag_values)
    flags.DEFINE_string("data_dir", None, "Raw and prepared data root "
                        "(default $RMAML_DATA_DIR or ~/.rmaml/data).",
                        flag_values=flag_values)
    flags.DEFINE_string("cache_dir", None, "Decoded caches (default "
                        "$RMAML_CACHE_DIR or ~/.cache/tf_rmaml).",
                        flag_values=flag_values)
    flags.DEFINE_integer("image_size", None, "Square image side; default per "
                         "dataset (omniglot 28, miniimagenet 84; cifar_fs "
                         "only 32).", lower_bound=1, flag_values=flag_values)


def main(argv):
    actions = argv[1:]
    if len(actions) != 1 or actions[0] not in ACTIONS:
        raise app.UsageError(
            f"Give exactly one action, one of {ACTIONS}, e.g. `rmaml-data "
            f"download --dataset=omniglot --data_dir=DIR`; got {actions}.")
    action = actions[0]
    if FLAGS.dataset is None:
        raise app.UsageError(
            f"--dataset is required; choose one of {sources.DATASETS}.")
    data_dir = FLAGS.data_dir or sources.default_data_dir()
    cache_dir = FLAGS.cache_dir or sources.default_cache_dir()
    try:
        summary = sources.prepare(FLAGS.dataset, data_dir=data_dir,
                                  cache_dir=cache_dir,
                                  download=action == "download",
                                  image_size=FLAGS.image_size)
    except DataError as e:
        # The message says how to fix it; a traceback adds nothing.
        logging.error("%s", e)
        raise SystemExit(1) from e
    logging.info("%s ready (data_dir=%s, cache_dir=%s):", FLAGS.dataset,
                 data_dir, cache_dir)
    for split, info in summary.items():
        logging.info("  %-5s %5d classes x %4d images of %s", split,
                     info["num_classes"], info["per_class"],
                     "x".join(str(d) for d in info["image_shape"]))


def run():
    """Console-script entry point (`rmaml-data`)."""
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
