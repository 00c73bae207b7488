"""PNG plots of an evaluation: RA vs eps, and SA / RA vs fine-tuning step. Needs matplotlib."""

import os

from tf_rmaml.attacks.summary import attack_summary


def plot_evaluation(results, path):
    """Writes a two-panel PNG for `rmaml-eval` results; returns the path, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    steps = list(range(len(results["sa_per_step"])))
    right.errorbar(steps, [100 * v for v in results["sa_per_step"]],
                   yerr=[100 * v for v in results["sa_ci95_per_step"]], label="SA", marker="o", capsize=3)
    if "ra_per_step" in results:
        pts = [(s, v, c) for s, v, c in zip(steps, results["ra_per_step"], results["ra_ci95_per_step"]) if v is not None]
        right.errorbar([p[0] for p in pts], [100 * p[1] for p in pts], yerr=[100 * p[2] for p in pts],
                       label="RA", marker="s", capsize=3)
        curve = results.get("ra_vs_eps", [])
        left.errorbar([p["eps_255"] for p in curve], [100 * p["ra"] for p in curve],
                      yerr=[100 * p["ra_ci95"] for p in curve], marker="s", capsize=3)
        what = attack_summary(results["attack"], with_eps=False)
        left.set_title(f"RA vs eps: {what}", fontsize=8, wrap=True)
    left.set_xlabel("eps (x 1/255)")
    left.set_ylabel("accuracy (%)")
    right.set_xlabel("fine-tuning step")
    right.set_title(f"{results['num_tasks']} tasks, 95% CI")
    right.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
