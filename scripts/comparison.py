"""Runs and tabulates the R-MAML comparison: one row per method flag file of a dataset.

Every row trains from its flag file (`flags/<dataset>_<row>_5w1s[_cpu].flags`) and is scored on the
same fixed test tasks: SA and RA under PGD-10 (the paper's protocol) on --num_tasks tasks, then RA
under `--attack=strong` on --strong_tasks tasks; optionally the same model fine-tuned at test time
on the head only (`--head_test`). After every row is trained, the gradient-masking checks run on
--checks_tasks tasks: PGD-10 at eps 0, half and twice the radius, uniform noise, twice the steps with
one more restart, and a transfer attack from another trained row (`--surrogate_row`, default maml;
the surrogate row itself takes the first other row of --rows). Steps whose output exists are skipped, so a
stopped `run` resumes (training from its last checkpoint, an evaluation from its last saved task).

  python scripts/comparison.py plan --dataset=omniglot --cpu --runs_dir=runs/omniglot    # print the commands
  python scripts/comparison.py run --dataset=omniglot --cpu --runs_dir=runs/omniglot --rows=maml,rmaml_out_at_fgsm
  python scripts/comparison.py table --runs_dir=runs/omniglot                             # markdown tables

Trainings run one after another: on a shared machine, parallel runs make each other's timings
meaningless, and on the 2-core box two side by side added no throughput (docs/performance.md).
"""

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
from typing import NamedTuple, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_flagfiles import DATASETS, FLAGS_DIR, METHODS  # noqa: E402

from tf_rmaml.attacks.summary import EVAL_EPS_255, attack_summary  # noqa: E402

ROWS = ["maml", *METHODS]


def flagfile(dataset, row, cpu):
    return os.path.join(FLAGS_DIR, f"{dataset}_{row}_5w1s{'_cpu' if cpu else ''}.flags")


class Step(NamedTuple):
    done: Optional[str]  # the step's output; the step is skipped when it exists (None: always run)
    log: str
    cmd: list


def plan(dataset, rows, runs_dir, cpu, num_tasks, strong_tasks, head_test, checks_tasks=0, surrogate_row="maml"):
    """The steps of each row, in order: train (it resumes, or does nothing when finished), then evaluate;
    then, once every row is trained, the masking checks of each row."""
    if surrogate_row not in ROWS:
        raise SystemExit(f"Unknown --surrogate_row {surrogate_row!r}; choose from {', '.join(ROWS)}.")
    steps, checks = [], []
    for row in rows:
        if row not in ROWS:
            raise SystemExit(f"Unknown row {row!r}; choose from {', '.join(ROWS)}.")
        path = flagfile(dataset, row, cpu)
        if not os.path.exists(path):
            raise SystemExit(f"No flag file {path}; run scripts/make_flagfiles.py or choose another --dataset.")
        run = os.path.join(runs_dir, row)
        steps.append(Step(None, os.path.join(run, "train.log"),
                          [sys.executable, "-m", "tf_rmaml.cli.train", f"--flagfile={path}", f"--train_dir={run}"]))

        def evaluation(name, tasks, *extra, run=run):
            out = os.path.join(run, f"{name}.json")
            return Step(out, os.path.join(run, f"{name}.log"),
                        [sys.executable, "-m", "tf_rmaml.cli.evaluate", f"--train_dir={run}", "--queries=15",
                         "--attack_at=last", f"--num_tasks={tasks}", *extra, f"--output_json={out}"])

        steps.append(evaluation(f"test_pgd10_{num_tasks}", num_tasks, "--attack=pgd", "--nochecks"))
        if strong_tasks:
            steps.append(evaluation(f"test_strong_{strong_tasks}", strong_tasks, "--attack=strong", "--nochecks"))
        if head_test and not row.endswith("_head"):
            steps.append(evaluation(f"test_pgd10_{num_tasks}_head", num_tasks, "--attack=pgd", "--nochecks",
                                    "--finetune_test=head"))
        if checks_tasks:
            eps = EVAL_EPS_255[dataset] / 255
            others = [r for r in rows if r != row]
            surrogate = surrogate_row if row != surrogate_row else (others[0] if others else None)
            if surrogate is not None and surrogate not in rows and not os.path.exists(
                    os.path.join(runs_dir, surrogate, "config.json")):
                surrogate = None  # not trained here and not planned: the JSON reports the transfer check not run
            extra = ["--attack=pgd", f"--eps_list={eps / 2!r},{2 * eps!r}"]
            if surrogate is not None:
                extra.append(f"--surrogate_dir={os.path.join(runs_dir, surrogate)}")
            checks.append(evaluation(f"checks_pgd10_{checks_tasks}", checks_tasks, *extra))
    return steps + checks


def _pct(value, ci):
    return f"{100 * value:.2f} +- {100 * ci:.2f}"


def table(runs_dir):
    """A markdown table of every evaluation JSON under runs_dir (one line per run and fine-tuning)."""
    lines = ["| run | fine-tuned at test | SA (%) | RA (%) | RA among clean-correct (%) | attack |",
             "|---|---|---|---|---|---|"]
    found = sorted(glob.glob(os.path.join(runs_dir, "*", "test_*.json")))
    if not found:
        raise SystemExit(f"No test_*.json under {runs_dir}/*/: run `comparison.py run` first.")
    for path in found:
        with open(path) as f:
            result = json.load(f)
        run = os.path.basename(os.path.dirname(path))
        ft = result.get("finetune_test", "all")
        sa = _pct(result["sa"], result["sa_ci95"])
        if "ra" not in result:
            lines.append(f"| {run} | {ft} | {sa} | - | - | none, {result['num_tasks']} tasks |")
            continue
        lines.append(f"| {run} | {ft} | {sa} | {_pct(result['ra'], result['ra_ci95'])} | "
                     f"{100 * result['ra_on_clean_correct']:.1f} | {attack_summary(result['attack'], result['num_tasks'])} |")
    checked = sorted(glob.glob(os.path.join(runs_dir, "*", "checks_*.json")))
    if checked:
        lines += ["", "| run | check | result | detail |", "|---|---|---|---|"]
    for path in checked:
        with open(path) as f:
            result = json.load(f)
        run = os.path.basename(os.path.dirname(path))
        for name, check in sorted(result.get("checks", {}).items()):
            verdict = {True: "passed", False: "**failed**", None: "not run"}[check["passed"]]
            lines.append(f"| {run} | {name} | {verdict} | {check['detail']} |")
        lowest = result.get("ra_lowest_of_checks")
        if lowest is not None:
            # The tighter upper bound on RA the check attacks give (per task, the lowest RA).
            lines.append(f"| {run} | lowest RA per task, main and check attacks | {_pct(lowest['ra'], lowest['ra_ci95'])} | "
                         f"main RA {_pct(result['ra'], result['ra_ci95'])}; with {', '.join(lowest['roles'])}, "
                         f"{result['num_tasks']} tasks |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["plan", "run", "table"])
    parser.add_argument("--dataset", default="omniglot", choices=sorted(DATASETS))
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma list of {', '.join(ROWS)}")
    parser.add_argument("--runs_dir", required=True)
    parser.add_argument("--cpu", action="store_true", help="the *_cpu.flags recipes (Omniglot, CIFAR-FS)")
    parser.add_argument("--num_tasks", type=int, default=2400)
    parser.add_argument("--strong_tasks", type=int, default=240, help="0: no strong attack")
    parser.add_argument("--head_test", action="store_true", help="also evaluate with head-only fine-tuning")
    parser.add_argument("--checks_tasks", type=int, default=240, help="tasks of the masking checks; 0: none")
    parser.add_argument("--surrogate_row", default="maml", help="the trained row whose model is the transfer "
                        "check's surrogate for every other row")
    args = parser.parse_args(argv)
    if args.command == "table":
        print(table(args.runs_dir))
        return
    steps = plan(args.dataset, args.rows.split(","), args.runs_dir, args.cpu, args.num_tasks, args.strong_tasks,
                 args.head_test, args.checks_tasks, args.surrogate_row)
    for step in steps:
        if args.command == "plan":
            print(shlex.join(step.cmd))
            continue
        if step.done and os.path.exists(step.done):
            print(f"skip (done): {step.done}", file=sys.stderr)
            continue
        os.makedirs(os.path.dirname(step.log), exist_ok=True)
        print(f"{shlex.join(step.cmd)}  > {step.log}", file=sys.stderr)
        with open(step.log, "a") as f:
            code = subprocess.call(step.cmd, stdout=f, stderr=subprocess.STDOUT)
        if code != 0:
            raise SystemExit(f"Step failed ({code}); see {step.log}. Re-running `comparison.py run` resumes here.")

if __name__ == "__main__":
    main()
