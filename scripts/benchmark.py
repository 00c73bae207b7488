"""Seconds per meta-iteration and peak memory of MAML (and the robust methods) for the three
benchmark settings; attacked query images per second of the robust evaluation.

Each measurement runs in its own process (so peak RSS is its own), on random images
of the right shape (speed does not depend on pixel values, and MiniImageNet images
cannot be had here). Settings are the paper code's: 5-way 1-shot, 15 queries, 4
tasks, 5 inner steps, and each dataset's network.

Usage:
  python scripts/benchmark.py                 # all settings x {graph, xla} x {second, first} order
  python scripts/benchmark.py --settings=omniglot --modes=graph --orders=second --steps=30
  python scripts/benchmark.py --settings=omniglot --modes=graph --orders=second \
      --methods=maml,rmaml_out_at,rmaml_out_trades,rmaml_both_at,adml,aq   # cost per method
  python scripts/benchmark.py --eval --settings=omniglot --tasks_per_call=1,8   # attacked queries / s
  python scripts/benchmark.py --settings=cifar_fs --modes=graph --orders=second --finetune=all,head   # partial
  python scripts/benchmark.py --eval --settings=cifar_fs --tasks_per_call=8 --finetune=all,head
Prints a markdown table (paste into docs/performance.md).
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

SETTINGS = {
    # name: (backbone, image shape, classes)
    "omniglot": ("omniglot_strided", (28, 28, 1), 64),
    "cifar_fs": ("cifar_fs_small", (32, 32, 3), 64),
    "miniimagenet": ("metaadv_miniimagenet", (84, 84, 3), 64),
}


# name: RobustConfig arguments (training eps 8/255, the paper's gammas).
METHODS = {
    "maml": {},
    "rmaml_out_at": {"method": "rmaml_out", "regularizer": "at"},
    "rmaml_out_at_pgd": {"method": "rmaml_out", "regularizer": "at", "train_attack": "pgd", "train_attack_steps": 10},
    "rmaml_out_trades": {"method": "rmaml_out", "regularizer": "trades"},
    # + 5 unlabeled images per task class in the KL term (the CPU flag files' --unlabeled_per_class).
    "rmaml_out_trades_unlabeled": {"method": "rmaml_out", "regularizer": "trades", "unlabeled_per_class": 5},
    "rmaml_both_at": {"method": "rmaml_both", "regularizer": "at"},
    "adml": {"method": "adml", "regularizer": "at"},
    "aq": {"method": "aq", "regularizer": "at", "train_attack": "pgd", "train_attack_steps": 7},
    # + the auxiliary contrastive task (gamma_cl 0.1), clean or adversarial views.
    "rmaml_out_trades_cl": {"method": "rmaml_out", "regularizer": "trades", "gamma_cl": 0.1, "cl_views": "clean"},
    "rmaml_out_trades_cl_adv": {"method": "rmaml_out", "regularizer": "trades", "gamma_cl": 0.1,
                                "cl_views": "adversarial"},
}


def measure_eval(setting, tasks_per_call, num_tasks, attack_steps, finetune="all"):
    """Attacked query images per second: fine-tune 10 steps, PGD on the 75 queries (child process)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from tf_rmaml.attacks.evaluation import AttackConfig
    from tf_rmaml.data.episodes import EpisodeSource, EpisodeSpec
    from tf_rmaml.meta.evaluation import FineTuneEvaluator
    from tf_rmaml.models.backbones import build_backbone, finetune_mask

    backbone, shape, classes = SETTINGS[setting]
    images = np.random.default_rng(0).integers(0, 256, size=(classes, 40) + shape, dtype=np.uint8)
    source = EpisodeSource(images, "test", EpisodeSpec(5, 1, 15), seed=0)
    model = build_backbone(backbone, ways=5, input_shape=shape, seed=0)
    attack = AttackConfig("pgd", eps=8 / 255, steps=attack_steps, step_size=2 / 255)
    evaluator = FineTuneEvaluator(model, steps=10, lr=0.01, mask=finetune_mask(model, finetune), attacks=[attack],
                                  attack_at="last", tasks_per_call=tasks_per_call)
    t0 = time.perf_counter()
    evaluator.evaluate(source.dataset(0, tasks_per_call))  # tracing
    first_call = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluator.evaluate(source.dataset(0, num_tasks))
    seconds = time.perf_counter() - t0
    return {"setting": setting, "finetune": finetune, "tasks_per_call": tasks_per_call, "num_tasks": num_tasks,
            "attack": f"PGD-{attack_steps}", "tasks_per_second": num_tasks / seconds,
            "queries_per_second": num_tasks * 75 / seconds, "first_call_seconds": first_call}


def measure(setting, mode, order, steps, warmup, meta_batch, inner_steps, method="maml", finetune="all"):
    """Runs in the child process; returns a dict of measurements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import resource

    import keras
    import numpy as np

    from tf_rmaml.data.episodes import EpisodeSource, EpisodeSpec, UnlabeledSpec
    from tf_rmaml.meta.contrastive import ContrastiveConfig, ContrastiveTask, build_head
    from tf_rmaml.meta.learner import MetaConfig, MetaLearner
    from tf_rmaml.meta.robust import RobustConfig
    from tf_rmaml.models.backbones import build_backbone

    backbone, shape, classes = SETTINGS[setting]
    images = np.random.default_rng(0).integers(0, 256, size=(classes, 40) + shape, dtype=np.uint8)
    spec = EpisodeSpec(5, 1, int(os.environ.get("BENCH_QUERIES", 15)))
    kwargs = dict(METHODS[method])
    per_class = kwargs.pop("unlabeled_per_class", None)
    unlabeled = UnlabeledSpec(per_class=per_class, classes="task") if per_class else None
    source = EpisodeSource(images, "train", spec, seed=0, unlabeled=unlabeled)
    model = build_backbone(backbone, ways=5, input_shape=shape, seed=0)
    optimizer = keras.optimizers.Adam(1e-3, epsilon=1e-8)
    cl = {f.name: kwargs.pop(f.name) for f in dataclasses.fields(ContrastiveConfig) if f.name in kwargs}
    robust = RobustConfig(train_eps=8 / 255, **kwargs)
    contrastive = None
    if cl:
        cl_config = ContrastiveConfig(**cl)
        contrastive = ContrastiveTask(model, build_head(model, cl_config.cl_head_dims, seed=0), cl_config, robust,
                                      shape, seed=0)
    learner = MetaLearner(
        model, MetaConfig(inner_steps=inner_steps, first_order=order == "first", finetune=finetune), optimizer,
        meta_batch=meta_batch, jit_compile=mode == "xla", robust=robust, contrastive=contrastive,
    )
    batches = iter(source.dataset(0, (steps + warmup + 1) * meta_batch, meta_batch))

    def one_step():
        grads, metrics, state = learner.compute(next(batches))
        learner.apply(grads, state)
        return float(metrics["meta_loss"])

    t0 = time.perf_counter()
    one_step()
    first_call = time.perf_counter() - t0
    for _ in range(warmup):
        one_step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        one_step()
        times.append(time.perf_counter() - t0)
    return {
        "setting": setting, "backbone": backbone, "mode": mode, "order": order, "method": method, "finetune": finetune,
        "seconds_per_iteration": float(np.median(times)),
        "seconds_p90": float(np.percentile(times, 90)),
        "first_call_seconds": first_call,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "meta_batch": meta_batch, "inner_steps": inner_steps, "steps": steps,
    }


def main():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tf_rmaml.models.backbones import FINETUNE_MODES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--modes", default="graph,xla")
    parser.add_argument("--orders", default="second,first")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--meta_batch", type=int, default=4)
    parser.add_argument("--inner_steps", type=int, default=5)
    parser.add_argument("--methods", default="maml", help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--finetune", default="all", help=f"comma list of {', '.join(FINETUNE_MODES)} (layers adapted)")
    parser.add_argument("--eval", action="store_true", help="measure the robust evaluation instead")
    parser.add_argument("--tasks_per_call", default="1,8")
    parser.add_argument("--eval_tasks", type=int, default=64)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--json_out", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child.split(":")
        if kind == "eval":
            setting, tasks_per_call, finetune = rest
            print(json.dumps(measure_eval(setting, int(tasks_per_call), args.eval_tasks, args.attack_steps, finetune)))
        else:
            setting, mode, order, method, finetune = rest
            print(json.dumps(measure(setting, mode, order, args.steps, args.warmup, args.meta_batch, args.inner_steps,
                                     method, finetune)))
        return
    finetunes = args.finetune.split(",")
    for finetune in finetunes:
        if finetune not in FINETUNE_MODES:
            sys.exit(f"Unknown --finetune {finetune!r}; choose from {', '.join(FINETUNE_MODES)}.")
    children = []
    for setting in args.settings.split(","):
        if setting not in SETTINGS:
            sys.exit(f"Unknown setting {setting!r}; choose from {', '.join(SETTINGS)}.")
        if args.eval:
            children += [f"eval:{setting}:{int(b)}:{f}" for b in args.tasks_per_call.split(",") for f in finetunes]
            continue
        for method in args.methods.split(","):
            if method not in METHODS:
                sys.exit(f"Unknown method {method!r}; choose from {', '.join(METHODS)}.")
            children += [f"train:{setting}:{mode}:{order}:{method}:{f}"
                         for mode in args.modes.split(",") for order in args.orders.split(",") for f in finetunes]
    rows = []
    for child in children:
        cmd = [sys.executable, __file__, f"--child={child}", f"--steps={args.steps}", f"--warmup={args.warmup}",
               f"--meta_batch={args.meta_batch}", f"--inner_steps={args.inner_steps}",
               f"--eval_tasks={args.eval_tasks}", f"--attack_steps={args.attack_steps}"]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{child} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(child, rows[-1], file=sys.stderr)
    if args.eval:
        print("| setting | fine-tuned | attack | tasks per call | tasks / s | attacked queries / s | first call (s) |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['setting']} | {r['finetune']} | {r['attack']} | {r['tasks_per_call']} | {r['tasks_per_second']:.2f} | "
                  f"{r['queries_per_second']:.0f} | {r['first_call_seconds']:.1f} |")
    else:
        print("| setting | backbone | method | fine-tuned | mode | order | s / meta-iteration (median) | p90 "
              "| first call (s) | peak RSS (MiB) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['setting']} | {r['backbone']} | {r['method']} | {r['finetune']} | {r['mode']} | {r['order']} | "
                  f"{r['seconds_per_iteration']:.3f} | {r['seconds_p90']:.3f} | {r['first_call_seconds']:.1f} | "
                  f"{r['peak_rss_mib']:.0f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
