import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

# Modules that define absl flags import under pytest without a command line.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One run of flags/smoke.flags (10 steps), shared by the tests that only read it."""
    from test_train_cli import SMOKE, _cli

    train_dir = str(tmp_path_factory.mktemp("smoke") / "run")
    _cli("train", f"--flagfile={SMOKE}", f"--train_dir={train_dir}")
    return train_dir
