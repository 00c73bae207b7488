"""Robust evaluation: RA counted per example over all runs, checks, flag validation."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tf_rmaml.attacks.checks import check_attacks, checks_status, lowest_ra_of_checks, run_checks
from tf_rmaml.attacks.evaluation import AttackConfig
from tf_rmaml.errors import ConfigError
from tf_rmaml.meta.evaluation import FineTuneEvaluator
from tf_rmaml.models.backbones import build_backbone, finetune_mask


def _tasks(n=3):
    rng = np.random.default_rng(0)
    for _ in range(n):
        yield {
            "support_x": tf.constant(rng.uniform(size=(5, 16, 16, 1)), tf.float32),
            "support_y": tf.range(5),
            "query_x": tf.constant(rng.uniform(size=(10, 16, 16, 1)), tf.float32),
            "query_y": tf.repeat(tf.range(5), 2),
        }


def test_ra_at_zero_eps_is_sa_and_ra_never_exceeds_sa():
    model = build_backbone("conv4", ways=5, input_shape=(16, 16, 1), filters=4, seed=0)
    pgd = AttackConfig("pgd", eps=8 / 255, steps=3, step_size=2 / 255)
    attacks = [pgd, AttackConfig("pgd", eps=0.0, steps=3), AttackConfig("noise", eps=8 / 255, restarts=2)]
    evaluator = FineTuneEvaluator(model, steps=2, lr=0.1, mask=finetune_mask(model), attacks=attacks, attack_at="all")
    out = evaluator.evaluate(_tasks())
    assert out["num_tasks"] == 3 and len(out["ra_per_step"]) == 3
    by_eps0 = out["attacks"][1]
    assert by_eps0["ra"] == pytest.approx(out["sa"], abs=1e-12)
    for sa, ra in zip(out["sa_per_step"], out["ra_per_step"]):
        assert ra <= sa + 1e-12
    # Only the first attack runs at every step.
    assert out["attacks"][2]["ra_per_step"][:2] == [None, None]
    assert out["attack"]["eps_255"] == pytest.approx(8.0)


def test_running_bn_mode_differs_from_batch_mode():
    model = build_backbone("conv4", ways=5, input_shape=(16, 16, 1), filters=4, seed=0)
    batch = FineTuneEvaluator(model, steps=1, lr=0.1, mask=finetune_mask(model)).evaluate(_tasks())
    running = FineTuneEvaluator(model, steps=1, lr=0.1, mask=finetune_mask(model), bn_mode="running").evaluate(_tasks())
    assert batch["bn_mode"] == "batch" and running["bn_mode"] == "running"
    assert batch["sa_per_step"] != running["sa_per_step"]


def _per_task(mean, n=60, spread=0.25, seed=0):
    """Per-task accuracies (multiples of 1/75, as 75 queries) around `mean` with a wide spread."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round((mean + spread * rng.standard_normal(n)) * 75) / 75, 0, 1)


def test_checks_flag_masking():
    main = _per_task(0.3)
    ok, suspected = run_checks(0.9, main, 0.04, {"eps0": np.full(60, 0.9), "noise": main + 0.4, "stronger": main,
                                                 "transfer": main + 0.2},
                               [(0.02, main + 0.1), (0.08, main - 0.1)])
    assert not suspected and all(c["passed"] for c in ok.values()), ok
    bad, suspected = run_checks(0.9, main, 0.04, {"eps0": np.full(60, 0.8), "noise": main - 0.2,
                                                  "stronger": main + 0.1, "transfer": main - 0.2},
                                [(0.08, main + 0.2)])
    assert suspected
    assert [name for name, c in bad.items() if c["passed"]] == ["attack_converged"]
    # A stronger attack that still lowers RA a lot: the attack had not converged.
    weak, suspected = run_checks(0.9, main, 0.04, {"eps0": np.full(60, 0.9), "noise": main + 0.4,
                                                   "stronger": main - 0.05, "transfer": main + 0.2}, [(0.08, main - 0.1)])
    assert suspected and [name for name, c in weak.items() if not c["passed"]] == ["attack_converged"]
    assert set(check_attacks(AttackConfig("pgd"))) == {"eps0", "noise", "stronger"}
    assert set(check_attacks(AttackConfig("pgd"), transfer=True)) == {"eps0", "noise", "stronger", "transfer"}
    assert set(check_attacks(AttackConfig("pgd", target="support"))) == {"eps0", "stronger"}
    assert check_attacks(AttackConfig("none")) == {}


def test_checks_compare_the_same_tasks_pairwise():
    """A drop of one query in 75 on a quarter of the tasks is far inside the between-task CI of RA
    (+-6 points here) but certain task by task: the convergence check must see it."""
    main = _per_task(0.3)
    stronger = main.copy()
    stronger[::4] = np.maximum(stronger[::4] - 1 / 75, 0)
    unpaired_ci = 1.96 * main.std(ddof=1) / np.sqrt(main.size)
    assert main.mean() - stronger.mean() < unpaired_ci / 10
    checks, suspected = run_checks(0.9, main, 0.04, {"stronger": stronger}, [(0.08, main - 0.1)])
    assert suspected and checks["attack_converged"]["passed"] is False
    assert "paired" in checks["attack_converged"]["detail"]
    # Random-start noise that goes both ways is not a failure.
    rng = np.random.default_rng(5)
    wobble = np.clip(main + rng.choice([-1, 0, 0, 1], main.size) / 75, 0, 1)
    checks, suspected = run_checks(0.9, main, 0.04, {"stronger": np.minimum(wobble, main + 1 / 75)}, [(0.08, main - 0.1)])
    assert checks["attack_converged"]["passed"] is True


def test_lowest_ra_of_checks_is_the_per_task_minimum():
    main = np.array([0.5, 0.4, 0.3])
    stronger, noise = np.array([0.4, 0.4, 0.3]), np.array([0.5, 0.2, 0.3])
    mean, ci, roles = lowest_ra_of_checks(main, {"eps0": np.ones(3), "stronger": stronger, "noise": noise})
    assert roles == ["stronger", "noise"] and mean == pytest.approx(0.3) and ci > 0
    assert mean < min(stronger.mean(), noise.mean())  # tighter than either attack alone
    assert lowest_ra_of_checks(main, {"eps0": np.ones(3)}) is None


def test_checks_status_names_failures_the_tighter_ra_and_what_did_not_run():
    main = _per_task(0.3)
    checks_ra = {"eps0": np.full(60, 0.9), "noise": main + 0.4, "stronger": main - 0.05}
    checks, _ = run_checks(0.9, main, 0.04, checks_ra, [(0.08, main - 0.1)],
                           {"transfer_does_not_beat_white_box": "no trained surrogate"})
    mean, ci, roles = lowest_ra_of_checks(main, checks_ra)
    results = {"checks": checks, "ra_lowest_of_checks": {"ra": mean, "ra_ci95": ci, "roles": roles}}
    text = checks_status(results)
    assert text.startswith("CHECKS FAILED: attack_converged; the lowest RA per task over the main attack and "
                           "stronger, noise is "), text
    assert f"{100 * mean:.2f}% +- {100 * ci:.2f}%" in text and "--attack=strong" in text
    assert text.endswith("checks: 4 passed; 1 not run (transfer_does_not_beat_white_box)"), text
    assert mean == pytest.approx((main - 0.05).mean())
    # A failure that no attack's RA bounds (RA at eps 0 below SA) gives no number to report.
    checks, _ = run_checks(0.9, main, 0.04, {"eps0": np.full(60, 0.8)}, [])
    text = checks_status({"checks": checks, "ra_lowest_of_checks": results["ra_lowest_of_checks"]})
    assert text.startswith("CHECKS FAILED: ra_at_eps0_equals_sa; checks: 0 passed; 1 not run"), text
    # Nothing failed: the count and what did not run; no checks at all: said so.
    checks, _ = run_checks(0.9, main, 0.04, {"eps0": np.full(60, 0.9)}, [])
    assert checks_status({"checks": checks}) == "checks: 1 passed; 1 not run (ra_does_not_rise_with_eps)"
    assert checks_status({}) == "checks off"


@pytest.mark.parametrize("attacks", [2, 0])
def test_saved_outcomes_round_trip_exactly_and_a_resume_refuses_other_settings(tmp_path, attacks):
    from tf_rmaml.evaluate import _resume
    from tf_rmaml.meta.evaluation import load_outcomes, save_outcomes

    rng = np.random.default_rng(1)
    done = [(rng.uniform(size=4), rng.uniform(size=(attacks, 4)), np.int64(rng.integers(10)),
             rng.integers(10, size=attacks)) for _ in range(3)]
    path = str(tmp_path / "partial.npz")
    settings = {"checkpoint": "/runs/a/ckpt-5", "jit_compile": False, "device": "CPU", "eps": (8 / 255,),
                "attacks": [{"role": "main", "attack": "pgd", "eps_255": 8.0, "steps": 10, "restarts": 1}]}
    save_outcomes(path, done, settings, 12.5)
    back, saved, seconds = load_outcomes(path)
    assert saved == json.loads(json.dumps(settings)) and seconds == 12.5 and len(back) == len(done)
    for before, after in zip(done, back):
        for x, y in zip(before, after):
            np.testing.assert_array_equal(x, y)
            assert np.asarray(x).dtype == np.asarray(y).dtype and np.shape(x) == np.shape(y)
    resumed, seconds = _resume(path, settings, 2)
    assert len(resumed) == 2 and seconds == 12.5
    np.testing.assert_array_equal(resumed[1][1], done[1][1])
    with pytest.raises(ConfigError, match="jit_compile: saved False, now True"):
        _resume(path, {**settings, "jit_compile": True}, 3)
    with pytest.raises(ConfigError, match="main: pgd eps 8/255 20 steps"):
        _resume(path, {**settings, "attacks": [{**settings["attacks"][0], "steps": 20}]}, 3)


def test_a_check_that_cannot_run_is_not_a_pass():
    main = _per_task(0.3)
    checks, suspected = run_checks(0.9, main, 0.04, {"stronger": main}, [],
                                   {"transfer_does_not_beat_white_box": "no trained surrogate"})
    assert not suspected
    assert checks["ra_does_not_rise_with_eps"]["passed"] is None and "--eps_list" in checks["ra_does_not_rise_with_eps"]["detail"]
    assert checks["transfer_does_not_beat_white_box"] == {"passed": None, "detail": "not run: no trained surrogate"}
    with pytest.raises(ValueError, match="same tasks"):
        run_checks(0.9, main, 0.04, {"stronger": main[:10]}, [])


@pytest.mark.parametrize(
    "kwargs,match",
    [({"eps": 1.5}, "--eps must be in"), ({"steps": -1}, "--attack_steps"), ({"name": "cw"}, "Unknown --attack"),
     ({"restarts": 0}, "--attack_restarts"), ({"name": "strong", "norm": "l2"}, "--attack_norm=l2"),
     ({"name": "apgd_ce", "norm": "l2"}, "--attack_norm=l2")],
)
def test_bad_attack_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        AttackConfig(**kwargs)


def test_strong_is_a_superset_of_pgd_runs():
    runs = AttackConfig("strong", steps=10, restarts=1).runs()
    kinds = {(k, loss) for k, loss, _, _ in runs}
    assert ("pgd", "ce") in kinds and ("apgd", "ce") in kinds and ("apgd", "dlr") in kinds
    assert sum(k == "pgd" for k, *_ in runs) >= 5


def test_support_attack_poisons_fine_tuning_through_the_unrolled_steps():
    model = build_backbone("conv4", ways=5, input_shape=(16, 16, 1), filters=4, seed=0)
    attacks = [
        AttackConfig("pgd", eps=0.3, steps=5, step_size=0.1, target="support"),
        AttackConfig("pgd", eps=0.0, steps=2, step_size=0.1, target="support"),
    ]
    evaluator = FineTuneEvaluator(model, steps=2, lr=0.5, mask=finetune_mask(model), attacks=attacks)
    out = evaluator.evaluate(_tasks(4))
    assert out["attacks"][1]["ra"] == pytest.approx(out["sa"], abs=1e-12)
    assert out["ra"] < out["sa"], out
    assert out["attack"]["target"] == "support" and out["ra_per_step"][:2] == [None, None]
    with pytest.raises(ConfigError, match="attack_target"):
        AttackConfig("apgd_ce", target="support")


def test_transfer_attack_uses_the_surrogate():
    model = build_backbone("conv4", ways=5, input_shape=(16, 16, 1), filters=4, seed=0)
    surrogate = build_backbone("conv4", ways=5, input_shape=(16, 16, 1), filters=4, seed=1)
    pgd = AttackConfig("pgd", eps=0.2, steps=3, step_size=0.05)
    transfer = AttackConfig("pgd", eps=0.2, steps=3, step_size=0.05, target="transfer")
    with pytest.raises(ConfigError, match="surrogate"):
        FineTuneEvaluator(model, steps=1, lr=0.1, mask=finetune_mask(model), attacks=[transfer])
    out = FineTuneEvaluator(model, steps=1, lr=0.1, mask=finetune_mask(model), attacks=[pgd, transfer],
                            surrogate=surrogate).evaluate(_tasks())
    white, black = out["attacks"][0]["ra"], out["attacks"][1]["ra"]
    assert white <= black <= out["sa"] + 1e-12
