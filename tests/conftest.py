import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

# Modules that define absl flags import under pytest without a command line.
flags.FLAGS.mark_as_parsed()
