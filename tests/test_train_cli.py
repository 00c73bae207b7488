"""The command lines end to end on real Omniglot: smoke run, exact resume after SIGKILL and SIGTERM, clear errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "flags", "smoke.flags")
needs_data = pytest.mark.skipif(not os.environ.get("RMAML_DATA_DIR"), reason="RMAML_DATA_DIR is not set")


def _cli(module, *args, check=True, timeout=600):
    proc = subprocess.run(
        [sys.executable, "-m", f"tf_rmaml.cli.{module}", *args], capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def _variables(train_dir):
    ckpt = tf.train.latest_checkpoint(os.path.join(train_dir, "checkpoints"))
    reader = tf.train.load_checkpoint(ckpt)
    names = sorted(n for n in reader.get_variable_to_shape_map() if "OBJECT_GRAPH" not in n)
    return {n: reader.get_tensor(n) for n in names}


@needs_data
def test_smoke_train_then_eval(smoke_run, tmp_path):
    train_dir = smoke_run
    assert os.path.exists(os.path.join(train_dir, "config.json"))
    assert os.path.exists(os.path.join(train_dir, "flags.txt"))
    assert any(f.startswith("events.") for f in os.listdir(os.path.join(train_dir, "train")))
    out = str(tmp_path / "eval.json")
    _cli("evaluate", f"--train_dir={train_dir}", "--num_tasks=20", f"--output_json={out}", "--attack=none",
         "--queries=7")
    with open(out) as f:
        result = json.load(f)
    assert result["num_tasks"] == 20 and result["checkpoint_step"] == 10 and result["queries"] == 7
    assert 0.0 <= result["sa"] <= 1.0 and result["sa_ci95"] > 0
    assert len(result["sa_per_step"]) == 3 + 1 and "ra" not in result
    # The paper's protocol (PGD after clean fine-tuning), with the masking checks.
    out_ra = str(tmp_path / "eval_ra.json")
    proc = _cli("evaluate", f"--train_dir={train_dir}", "--num_tasks=4", f"--output_json={out_ra}", "--attack_at=last",
                "--eps_255=10", "--attack_steps=3", "--eps_list=0.02")
    with open(out_ra) as f:
        robust = json.load(f)
    # The RA log line says how the checks went, failures first (and only if any).
    failed = [name for name, check in robust["checks"].items() if check["passed"] is False]
    assert ("CHECKS FAILED: " + ", ".join(failed) in proc.stderr) == bool(failed), proc.stderr[-2000:]
    assert "not run (transfer_does_not_beat_white_box)]" in proc.stderr, proc.stderr[-2000:]
    lowest = robust["ra_lowest_of_checks"]
    assert lowest["roles"] == ["stronger", "noise"] and lowest["ra"] <= robust["ra"]
    assert robust["ra"] <= robust["sa"] and robust["attack"]["eps_255"] == pytest.approx(10.0)
    assert robust["checks"]["ra_at_eps0_equals_sa"]["passed"]
    # No trained surrogate given: the transfer check says it did not run, and is no pass.
    transfer = robust["checks"]["transfer_does_not_beat_white_box"]
    assert transfer["passed"] is None and "--surrogate_dir" in transfer["detail"]
    assert len(robust["ra_per_task"]) == len(robust["sa_per_task"]) == 4
    assert [p["eps"] for p in robust["ra_vs_eps"]] == sorted(p["eps"] for p in robust["ra_vs_eps"])
    # Scalars written for TensorBoard.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(train_dir, "train"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    for tag in ("meta_loss", "query_acc_before", "query_acc_after", "iterations_per_second"):
        assert tag in tags, tags
    # The HParams dashboard's record of the run, and clean/adversarial/perturbation images of the eval.
    root = EventAccumulator(train_dir, size_guidance={"tensors": 0})
    root.Reload()
    assert "_hparams_/session_start_info" in root.Tags()["tensors"], root.Tags()
    images = EventAccumulator(os.path.join(train_dir, "eval_test"), size_guidance={"tensors": 0})
    images.Reload()
    for tag in ("examples/clean", "examples/adversarial", "examples/perturbation", "ra"):
        assert tag in images.Tags()["tensors"], images.Tags()


@needs_data
def test_eval_finetune_test_override_equals_a_run_configured_so(smoke_run, tmp_path):
    """--finetune_test=head at evaluation is the same as a run whose config says head, and not the run's own."""
    import shutil

    from tf_rmaml.evaluate import evaluate_run

    head_run = str(tmp_path / "head_run")
    shutil.copytree(smoke_run, head_run)
    with open(os.path.join(head_run, "config.json")) as f:
        config = json.load(f)
    assert config["meta"]["finetune_test"] == "all"
    config["meta"]["finetune_test"] = "head"
    with open(os.path.join(head_run, "config.json"), "w") as f:
        json.dump(config, f)
    kwargs = dict(num_tasks=6, attack=None, checks=False, tasks_per_call=3)
    overridden = evaluate_run(smoke_run, finetune_test="head", **kwargs)
    configured = evaluate_run(head_run, **kwargs)
    own = evaluate_run(smoke_run, **kwargs)
    assert overridden["finetune_test"] == "head" and own["finetune_test"] == "all"
    np.testing.assert_allclose(overridden["sa_per_step"], configured["sa_per_step"], atol=1e-12)
    assert overridden["sa_per_step"][0] == own["sa_per_step"][0]  # same tasks, same meta-model
    assert overridden["sa_per_step"][1:] != own["sa_per_step"][1:]


@needs_data
def test_transfer_check_attacks_from_the_trained_surrogate(smoke_run, tmp_path):
    """--surrogate_dir loads that run and fine-tunes it as that run says: a copy of the evaluated
    run as surrogate computes the very attack of the white-box one."""
    import shutil

    from tf_rmaml.attacks.evaluation import AttackConfig
    from tf_rmaml.errors import ConfigError
    from tf_rmaml.evaluate import evaluate_run

    twin = str(tmp_path / "twin")
    shutil.copytree(smoke_run, twin)
    kwargs = dict(num_tasks=2, attack=AttackConfig("pgd", eps=10 / 255, steps=2), attack_at="last", tasks_per_call=2,
                  queries=3)
    with pytest.raises(ConfigError, match="evaluated run itself"):
        evaluate_run(smoke_run, surrogate_dir=smoke_run, **kwargs)
    with pytest.raises(ConfigError, match="none runs here"):
        evaluate_run(smoke_run, surrogate_dir=twin, checks=False, **kwargs)
    result = evaluate_run(smoke_run, surrogate_dir=twin, **kwargs)
    assert result["check_attacks"]["transfer"]["ra"] == result["ra"]
    assert result["checks"]["transfer_does_not_beat_white_box"]["passed"] is True
    with open(os.path.join(twin, "config.json")) as f:
        config = json.load(f)
    config["data"]["ways"] = 3
    with open(os.path.join(twin, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ConfigError, match="same images and classes"):
        evaluate_run(smoke_run, surrogate_dir=twin, **kwargs)


@needs_data
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    common = [
        f"--flagfile={SMOKE}", "--max_steps=30", "--checkpoint_every=1", "--eval_every=0",
        "--filters=8", "--queries=3", "--log_every=1",
    ]
    straight = str(tmp_path / "straight")
    _cli("train", *common, f"--train_dir={straight}")

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tf_rmaml.cli.train", *common, f"--train_dir={killed}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    index = os.path.join(killed, "checkpoints", "checkpoint")
    deadline = time.time() + 300
    while time.time() < deadline:
        latest = tf.train.latest_checkpoint(os.path.dirname(index)) if os.path.exists(index) else None
        if latest and int(latest.rsplit("-", 1)[1]) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = int(tf.train.latest_checkpoint(os.path.dirname(index)).rsplit("-", 1)[1])
    assert 5 <= stopped_at < 30

    # Resumed with no periodic checkpoints, then SIGTERM: the run finishes its meta-iteration,
    # saves it and exits 143; nothing is saved half-way through an iteration.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tf_rmaml.cli.train", *common, "--checkpoint_every=1000", f"--train_dir={killed}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    for line in proc.stderr:
        if f"step {stopped_at + 2}/30" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, rest[-3000:]
    terminated_at = int(tf.train.latest_checkpoint(os.path.dirname(index)).rsplit("-", 1)[1])
    assert stopped_at + 2 <= terminated_at < 30 and f"Stopped by SIGTERM after step {terminated_at}" in rest

    _cli("train", *common, f"--train_dir={killed}")
    a, b = _variables(straight), _variables(killed)
    assert a.keys() == b.keys()
    assert any("optimizer" in k for k in a), "optimizer state must be checkpointed"
    for name in a:
        if name.startswith("save_counter"):  # how many saves were made: bookkeeping, not the run's state
            continue
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@needs_data
def test_eval_stopped_by_sigterm_resumes_to_the_uninterrupted_result(smoke_run, tmp_path):
    # PGD and a curve point: two attacks per task, both resumed.
    args = [f"--train_dir={smoke_run}", "--num_tasks=24", "--tasks_per_call=4", "--nochecks", "--attack_at=last",
            "--attack_steps=2", "--eps_list=0.02"]
    straight = str(tmp_path / "straight.json")
    _cli("evaluate", *args, f"--output_json={straight}")

    out = str(tmp_path / "stopped.json")
    partial = out + ".partial.npz"
    proc = subprocess.Popen([sys.executable, "-m", "tf_rmaml.cli.evaluate", *args, f"--output_json={out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "evaluated 4/24 tasks" in line:  # logged after the first compiled call
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, rest[-3000:]
    assert not os.path.exists(out) and os.path.exists(partial), rest[-3000:]
    with np.load(partial) as f:
        saved = len(f["sa"])
    assert 4 <= saved < 24 and saved % 4 == 0 and f"stopped after {saved}/24 tasks" in rest

    # Other settings than the saved tasks': refused, naming the file and what differs.
    proc = _cli("evaluate", *args, "--attack_steps=3", f"--output_json={out}", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert partial in proc.stderr and "--noresume" in proc.stderr and "2 steps" in proc.stderr, proc.stderr[-3000:]
    # XLA changes the rounding: a resume with it switched is refused too, naming it.
    proc = _cli("evaluate", *args, "--jit_compile", f"--output_json={out}", check=False)
    assert proc.returncode != 0 and "jit_compile: saved False, now True" in proc.stderr, proc.stderr[-3000:]

    _cli("evaluate", *args, f"--output_json={out}")
    assert not os.path.exists(partial)
    with open(straight) as f:
        a = json.load(f)
    with open(out) as f:
        b = json.load(f)
    assert a["resumed_at_task"] == 0 and b["resumed_at_task"] == saved
    for key in ("sa_per_task", "ra_per_task", "sa_per_step", "ra_per_step", "ra_on_clean_correct", "ra_vs_eps",
                "num_tasks"):
        assert a[key] == b[key], key

    # --noresume starts over from an unreadable file instead of refusing it.
    with open(partial, "w") as f:
        f.write("not an npz")
    proc = _cli("evaluate", *args, f"--output_json={out}", check=False)
    assert proc.returncode != 0 and "not a readable partial evaluation" in proc.stderr, proc.stderr[-3000:]
    _cli("evaluate", *args, "--num_tasks=4", "--attack=none", "--noresume", f"--output_json={out}")
    with open(out) as f:
        assert json.load(f)["sa_per_task"] == a["sa_per_task"][:4]


@needs_data
@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset=imagenet"], "--dataset"),
        (["--backbone=resnet99"], "Unknown --backbone 'resnet99'"),
        (["--ways=1000"], "--ways=1000 is more than"),
        (["--shots=15", "--queries=10"], "images per class"),
        (["--inner_steps=-1"], "--inner_steps"),
        (["--meta_batch=0"], "--meta_batch must be >= 1"),
    ],
)
def test_bad_flags_give_one_clear_error(tmp_path, args, message):
    proc = _cli("train", f"--flagfile={SMOKE}", f"--train_dir={tmp_path / 'run'}", *args, check=False, timeout=300)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_no_data_and_no_network_says_where_to_put_files(tmp_path):
    proc = _cli(
        "train", f"--flagfile={SMOKE}", f"--train_dir={tmp_path / 'run'}", f"--data_dir={tmp_path / 'empty'}",
        f"--cache_dir={tmp_path / 'cache'}", check=False, timeout=300,
    )
    assert proc.returncode != 0
    assert "rmaml-data download" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


@needs_data
def test_resuming_with_other_flags_is_refused(tmp_path):
    train_dir = str(tmp_path / "run")
    _cli("train", f"--flagfile={SMOKE}", f"--train_dir={train_dir}", "--max_steps=2", "--eval_every=0")
    proc = _cli("train", f"--flagfile={SMOKE}", f"--train_dir={train_dir}", "--inner_lr=0.5", check=False)
    assert proc.returncode != 0 and "meta.inner_lr" in proc.stderr and "Traceback" not in proc.stderr


@needs_data
@pytest.mark.parametrize(
    "args,message",
    [(["--eps=2"], "--eps must be in [0, 1]"), (["--attack=cw"], "--attack"), (["--eps_list=0.1,abc"], "'abc' is not a number"),
     (["--attack_steps=-1"], "--attack_steps must be >= 1")],
)
def test_bad_eval_flags_give_one_clear_error(smoke_run, args, message):
    proc = _cli("evaluate", f"--train_dir={smoke_run}", "--num_tasks=2", *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_eval_of_empty_train_dir_is_a_clear_error(tmp_path):
    proc = _cli("evaluate", f"--train_dir={tmp_path}", check=False, timeout=300)
    assert proc.returncode != 0 and "config.json" in proc.stderr and "Traceback" not in proc.stderr
