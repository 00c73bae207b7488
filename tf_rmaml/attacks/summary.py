"""One line that says which attack produced a robust accuracy (no TensorFlow import).

Works on the `attack` dict of an evaluation JSON (`AttackConfig.describe()`), whose `runs` list is
what actually ran: for `strong` that is PGD with more steps and restarts plus APGD, so the top-level
`steps` / `restarts` (the PGD flags) must not be reported as if they were the attack.
"""

import collections

_NAMES = {"fgsm": "FGSM", "fgsm_rs": "FGSM-RS", "noise": "uniform noise"}
# The radius each dataset is evaluated at (1/255 units), as the paper's code: the default of rmaml-eval.
EVAL_EPS_255 = {"omniglot": 10.0, "cifar_fs": 8.0, "miniimagenet": 2.0}


def run_name(run):
    """`('pgd', 'ce', 20, 3)` (an `AttackConfig.runs()` entry) -> `'pgd-ce-20steps-restart3'`, as stored in JSON."""
    kind, loss, steps, restart = run
    return f"{kind}-{loss}-{steps}steps-restart{restart}"


def _parse_run(name):
    """The inverse of `run_name`, without the restart index: `'pgd-ce-20steps-restart3'` -> `('pgd', 'ce', 20)`."""
    kind, loss, steps, _ = name.rsplit("-", 3)
    return kind, loss, int(steps[: -len("steps")])


def attack_summary(attack, num_tasks=None, with_eps=True):
    """E.g. `strong = worst case per query of PGD-20 x 5 restarts (step 2/255) + APGD-CE-100 +
    APGD-DLR-100, L-inf eps 10/255, 240 tasks`, or `PGD-10 (step 2/255, 1 restart), L-inf eps 8/255`.
    `with_eps=False` leaves the radius out (for an RA-vs-eps curve)."""
    step = f"step {255 * attack['step_size']:.3g}/255"
    counts = collections.Counter(_parse_run(r) for r in attack.get("runs", []))
    parts = []
    for (kind, loss, steps), n in counts.items():
        if kind == "pgd":
            name = f"PGD-{steps}" + ("" if loss == "ce" else f" ({loss.upper()} loss)")
            name += f" x {n} restarts ({step})" if n > 1 else f" ({step}, 1 restart)"
        else:
            name = f"APGD-{loss.upper()}-{steps}" if kind == "apgd" else _NAMES.get(kind, kind)
            if n > 1:
                name += f" x {n} draws"
        parts.append(name)
    if not parts:  # an older JSON without the runs list, or no attack
        parts = [f"{attack['attack']} ({attack['steps']} steps, {step}, {attack['restarts']} restart(s))"]
    if len(parts) > 1:
        text = f"{attack['attack']} = worst case per query of " + " + ".join(parts)
    else:
        text = parts[0]
    norm = {"linf": "L-inf", "l2": "L2"}.get(attack.get("norm", "linf"), attack.get("norm"))
    text += f", {norm} eps {attack['eps_255']:.3g}/255" if with_eps else f", {norm}"
    target = attack.get("target", "query")
    if target != "query":
        text += {"support": ", on the support set before fine-tuning",
                 "transfer": ", transferred from a surrogate model"}.get(target, f", target {target}")
    if num_tasks is not None:
        text += f", {num_tasks} tasks"
    return text
