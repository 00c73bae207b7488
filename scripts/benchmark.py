"""Seconds per meta-iteration and peak memory of MAML for the three benchmark settings.

Each measurement runs in its own process (so peak RSS is its own), on random images
of the right shape (speed does not depend on pixel values, and MiniImageNet images
cannot be had here). Settings are the paper code's: 5-way 1-shot, 15 queries, 4
tasks, 5 inner steps, and each dataset's network.

Usage:
  python scripts/benchmark.py                 # all settings x {graph, xla} x {second, first} order
  python scripts/benchmark.py --settings=omniglot --modes=graph --orders=second --steps=30
Prints a markdown table (paste into docs/performance.md).
"""

import argparse
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


def measure(setting, mode, order, steps, warmup, meta_batch, inner_steps):
    """Runs in the child process; returns a dict of measurements."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import resource

    import keras
    import numpy as np

    from tf_rmaml.data.episodes import EpisodeSource, EpisodeSpec
    from tf_rmaml.meta.learner import MetaConfig, MetaLearner
    from tf_rmaml.models.backbones import build_backbone

    backbone, shape, classes = SETTINGS[setting]
    images = np.random.default_rng(0).integers(0, 256, size=(classes, 40) + shape, dtype=np.uint8)
    spec = EpisodeSpec(5, 1, int(os.environ.get("BENCH_QUERIES", 15)))
    source = EpisodeSource(images, "train", spec, seed=0)
    model = build_backbone(backbone, ways=5, input_shape=shape, seed=0)
    optimizer = keras.optimizers.Adam(1e-3, epsilon=1e-8)
    learner = MetaLearner(
        model, MetaConfig(inner_steps=inner_steps, first_order=order == "first"), optimizer,
        meta_batch=meta_batch, jit_compile=mode == "xla",
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
        "setting": setting, "backbone": backbone, "mode": mode, "order": order,
        "seconds_per_iteration": float(np.median(times)),
        "seconds_p90": float(np.percentile(times, 90)),
        "first_call_seconds": first_call,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "meta_batch": meta_batch, "inner_steps": inner_steps, "steps": steps,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--modes", default="graph,xla")
    parser.add_argument("--orders", default="second,first")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--meta_batch", type=int, default=4)
    parser.add_argument("--inner_steps", type=int, default=5)
    parser.add_argument("--json_out", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        setting, mode, order = args.child.split(":")
        print(json.dumps(measure(setting, mode, order, args.steps, args.warmup, args.meta_batch, args.inner_steps)))
        return
    rows = []
    for setting in args.settings.split(","):
        if setting not in SETTINGS:
            sys.exit(f"Unknown setting {setting!r}; choose from {', '.join(SETTINGS)}.")
        for mode in args.modes.split(","):
            for order in args.orders.split(","):
                cmd = [sys.executable, __file__, f"--child={setting}:{mode}:{order}", f"--steps={args.steps}",
                       f"--warmup={args.warmup}", f"--meta_batch={args.meta_batch}", f"--inner_steps={args.inner_steps}"]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    sys.exit(f"{setting}/{mode}/{order} failed:\n{out.stderr[-3000:]}")
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append(row)
                print(f"{setting:13s} {mode:5s} {order:6s} {row['seconds_per_iteration']:.3f} s/it", file=sys.stderr)
    print("| setting | backbone | mode | order | s / meta-iteration (median) | p90 | first call (s) | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['backbone']} | {r['mode']} | {r['order']} | {r['seconds_per_iteration']:.3f} | "
              f"{r['seconds_p90']:.3f} | {r['first_call_seconds']:.1f} | {r['peak_rss_mib']:.0f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
