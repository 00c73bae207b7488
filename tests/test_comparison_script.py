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


def test_masking_checks_follow_every_training_and_attack_from_another_trained_row(tmp_path):
    rows = ["maml", "rmaml_out_at_fgsm", "aq"]
    steps = comparison.plan("cifar_fs", rows, str(tmp_path), True, 2400, 0, False, checks_tasks=240)
    kinds = ["train" if "tf_rmaml.cli.train" in step.cmd else step.done.rsplit("/", 1)[1] for step in steps]
    assert kinds == ["train", "test_pgd10_2400.json"] * 3 + ["checks_pgd10_240.json"] * 3
    checks = {step.cmd[step.cmd.index("-m") + 2].split("=", 1)[1]: step.cmd for step in steps[6:]}
    for row, cmd in checks.items():
        assert "--nochecks" not in cmd and "--num_tasks=240" in cmd and "--attack=pgd" in cmd
        radii = [float(e) for e in next(a for a in cmd if a.startswith("--eps_list=")).split("=")[1].split(",")]
        assert radii == pytest.approx([4 / 255, 16 / 255])  # half and twice CIFAR-FS's 8/255
        surrogate = next(a for a in cmd if a.startswith("--surrogate_dir=")).split("=")[1]
        assert surrogate == str(tmp_path / ("rmaml_out_at_fgsm" if row.endswith("/maml") else "maml"))
    # A surrogate row neither planned nor trained: no --surrogate_dir (the JSON says the transfer check did not run).
    alone = comparison.plan("cifar_fs", ["aq"], str(tmp_path), True, 2400, 0, False, checks_tasks=240)
    assert not any(a.startswith("--surrogate_dir") for a in alone[-1].cmd)
    (tmp_path / "maml").mkdir()
    (tmp_path / "maml" / "config.json").write_text("{}")
    trained = comparison.plan("cifar_fs", ["aq"], str(tmp_path), True, 2400, 0, False, checks_tasks=240)
    assert f"--surrogate_dir={tmp_path / 'maml'}" in trained[-1].cmd
    with pytest.raises(SystemExit, match="Unknown --surrogate_row 'mam'"):
        comparison.plan("cifar_fs", rows, str(tmp_path), True, 2400, 0, False, checks_tasks=240, surrogate_row="mam")


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
    checks = {"checks": {"attack_converged": {"passed": False, "detail": "RA stronger - RA main: -0.52 +- 0.11"},
                         "transfer_does_not_beat_white_box": {"passed": None, "detail": "not run: no surrogate"},
                         "noise_does_not_beat_the_attack": {"passed": True, "detail": "RA noise - RA attack: +24"}},
              "ra": 0.1832, "ra_ci95": 0.0112, "num_tasks": 240,
              "ra_lowest_of_checks": {"ra": 0.1776, "ra_ci95": 0.0110, "roles": ["stronger", "noise"]}}
    (run / "checks_pgd10_240.json").write_text(json.dumps(checks))
    table = comparison.table(str(tmp_path)).splitlines()
    assert table[4:] == ["", "| run | check | result | detail |", "|---|---|---|---|",
                         "| rmaml_out_at_fgsm | attack_converged | **failed** | RA stronger - RA main: -0.52 +- 0.11 |",
                         "| rmaml_out_at_fgsm | noise_does_not_beat_the_attack | passed | RA noise - RA attack: +24 |",
                         "| rmaml_out_at_fgsm | transfer_does_not_beat_white_box | not run | not run: no surrogate |",
                         "| rmaml_out_at_fgsm | lowest RA per task, main and check attacks | 17.76 +- 1.10 | "
                         "main RA 18.32 +- 1.12; with stronger, noise, 240 tasks |"]
    table = table[:4]
    assert table[3] == ("| rmaml_out_at_fgsm | all | 93.25 +- 0.24 | 82.02 +- 0.38 | 88.0 | PGD-10 (step 2/255, "
                        "1 restart), L-inf eps 10/255, 2400 tasks |")
    assert table[2] == "| rmaml_out_at_fgsm | head | 50.00 +- 1.00 | - | - | none, 100 tasks |"
    with pytest.raises(SystemExit, match="No test_"):
        comparison.table(str(tmp_path / "empty"))
