"""scripts/comparison.py: every row of the comparison has its flag file, and the table reports each RA
with its attack (name, eps, step, restarts, tasks)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import comparison  # noqa: E402


@pytest.mark.parametrize("dataset,cpu", [("omniglot", True), ("omniglot", False), ("cifar_fs", True),
                                         ("cifar_fs", False), ("miniimagenet", False)])
def test_every_row_has_a_flag_file_and_the_same_tasks(dataset, cpu, tmp_path):
    steps = comparison.plan(dataset, comparison.ROWS, str(tmp_path), cpu, 2400, 240, head_test=True)
    trains = [step.cmd for step in steps if "tf_rmaml.cli.train" in step.cmd]
    assert len(trains) == len(comparison.ROWS)
    for cmd in trains:
        assert os.path.exists(cmd[-2].split("=", 1)[1])
    evals = [step.cmd for step in steps if "tf_rmaml.cli.evaluate" in step.cmd]
    # PGD-10 and strong for every row, head-only for every row that does not already fine-tune the head only.
    heads = [cmd for cmd in evals if "--finetune_test=head" in cmd]
    assert len(evals) == 2 * len(comparison.ROWS) + len(heads) and len(heads) == len(comparison.ROWS) - 1
    assert all("--eval_seed" not in " ".join(cmd) and "--queries=15" in cmd for cmd in evals)


def test_unknown_row_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="Unknown row 'mamll'"):
        comparison.plan("omniglot", ["mamll"], str(tmp_path), True, 10, 0, False)


def test_table_reports_the_attack_with_every_ra(tmp_path):
    run = tmp_path / "rmaml_out_at_fgsm"
    run.mkdir()
    result = {"sa": 0.9325, "sa_ci95": 0.0024, "ra": 0.8202, "ra_ci95": 0.0038, "ra_on_clean_correct": 0.8796,
              "num_tasks": 2400, "finetune_test": "all",
              "attack": {"attack": "pgd", "eps_255": 10.0, "steps": 10, "step_size": 2 / 255, "restarts": 1,
                         "runs": ["pgd-ce-10steps-restart0"]}}
    (run / "test_pgd10_2400.json").write_text(json.dumps(result))
    clean = {"sa": 0.5, "sa_ci95": 0.01, "num_tasks": 100, "finetune_test": "head"}
    (run / "test_clean.json").write_text(json.dumps(clean))
    table = comparison.table(str(tmp_path)).splitlines()
    assert len(table) == 4
    assert table[3] == ("| rmaml_out_at_fgsm | all | 93.25 +- 0.24 | 82.02 +- 0.38 | 88.0 | PGD-10 (step 2/255, "
                        "1 restart), L-inf eps 10/255, 2400 tasks |")
    assert table[2] == "| rmaml_out_at_fgsm | head | 50.00 +- 1.00 | - | - | none, 100 tasks |"
    with pytest.raises(SystemExit, match="No test_"):
        comparison.table(str(tmp_path / "empty"))
