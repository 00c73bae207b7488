"""Sanity checks that run with every robust evaluation, to catch weak attacks and gradient masking.

Each check compares robust accuracies measured on the *same* tasks, so it compares them task by
task: the tolerance of a comparison is the 95% confidence half-width of the mean per-task
difference (paired), not the between-task spread of either RA, which is many times wider and
would let a real gap pass. A violated check does not stop the evaluation: it is a warning and sets
`masking_suspected` in the results. A check that could not run says so (`passed` is None) and
never counts as passed.
"""

import dataclasses

import numpy as np

from tf_rmaml.attacks.evaluation import AttackConfig
from tf_rmaml.meta.evaluation import mean_ci95


def check_attacks(main, transfer=False):
    """The extra attacks the checks need, besides `main` and the eps curve.

    Returns a dict name -> AttackConfig: the same attack at eps 0; for query attacks, uniform
    noise of the same radius and, with `transfer` (a trained surrogate is available), the same
    attack computed on the surrogate; and (for iterative attacks) the same attack with twice the
    steps and one more restart.
    """
    if main.name == "none":
        return {}
    extra = {"eps0": dataclasses.replace(main, eps=0.0)}
    if main.target == "query":
        extra["noise"] = AttackConfig("noise", eps=main.eps, steps=1, step_size=main.step_size,
                                      restarts=max(main.restarts, 3), norm=main.norm)
        if transfer:
            extra["transfer"] = dataclasses.replace(main, target="transfer", restarts=1)
    if main.name in ("pgd", "apgd_ce", "apgd_dlr"):
        extra["stronger"] = dataclasses.replace(main, steps=2 * main.steps, restarts=main.restarts + 1)
    return extra


def paired_gap(reference, other):
    """Mean over tasks of `other - reference` (per-task accuracies of the same tasks) and the
    half-width of its 95% confidence interval."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    if reference.shape != other.shape:
        raise ValueError(f"Paired accuracies need the same tasks, got {reference.shape} and {other.shape}.")
    return mean_ci95(other - reference)


def _below(reference, other, what):
    """Whether `other` is significantly below `reference` (paired), and a description."""
    gap, ci = paired_gap(reference, other)
    return gap < -ci - 1e-12, f"{what}: {100 * gap:+.2f} +- {100 * ci:.2f} points over {len(reference)} tasks (paired)"


def run_checks(sa, main, main_eps, checks_ra, curve, skipped=None):
    """Evaluates the checks.

    Args:
      sa: standard accuracy (after fine-tuning).
      main: per-task robust accuracies under the main attack.
      main_eps: the main attack's radius.
      checks_ra: dict name -> per-task RAs (same tasks) for the attacks of `check_attacks`.
      curve: list of (eps, per-task RAs) of the same attack at other radii.
      skipped: dict check name -> why it could not run (reported with `passed` None).

    Returns:
      `(checks, masking_suspected)`: checks maps name -> {"passed": bool or None, "detail": str}.
    """
    main = np.asarray(main, np.float64)
    main_ra = float(main.mean())
    checks = {}
    if "eps0" in checks_ra:
        eps0 = float(np.mean(checks_ra["eps0"]))
        ok = abs(eps0 - sa) < 1e-9
        checks["ra_at_eps0_equals_sa"] = {"passed": ok, "detail": f"RA(eps=0)={eps0:.4f}, SA={sa:.4f}"}
    points = sorted([(main_eps, main)] + [(float(e), np.asarray(r, np.float64)) for e, r in curve],
                    key=lambda p: p[0])
    if len(points) < 2:
        checks["ra_does_not_rise_with_eps"] = {
            "passed": None, "detail": "not run: one radius only (pass --eps_list to measure RA at others)"}
    else:
        rising, details = [], []
        for (ea, ra_a), (eb, ra_b) in zip(points, points[1:]):
            # RA at the larger radius significantly above RA at the smaller one.
            above, text = _below(ra_b, ra_a, f"RA(eps {255 * ea:.3g}/255) - RA(eps {255 * eb:.3g}/255)")
            rising.append(above)
            details.append(text)
        checks["ra_does_not_rise_with_eps"] = {"passed": not any(rising), "detail": "; ".join(details)}
    if "stronger" in checks_ra:
        stronger = checks_ra["stronger"]
        above, text = _below(stronger, main, "RA main - RA stronger")
        checks["more_steps_and_restarts_do_not_raise_ra"] = {"passed": not above, "detail": text}
        # The other direction: if twice the steps and one more restart still lower RA, the attack
        # had not converged and its RA overstates robustness.
        below, text = _below(main, stronger, "RA stronger - RA main")
        checks["attack_converged"] = {
            "passed": not below,
            "detail": text + (f" (RA main {100 * main_ra:.2f}%): the attack had not converged; report the stronger "
                              "attack's RA or --attack=strong" if below else "")}
    if "noise" in checks_ra:
        below, text = _below(main, checks_ra["noise"], "RA noise - RA attack")
        checks["noise_does_not_beat_the_attack"] = {"passed": not below, "detail": text}
    if "transfer" in checks_ra:
        below, text = _below(main, checks_ra["transfer"], "RA transfer (trained surrogate) - RA white-box")
        checks["transfer_does_not_beat_white_box"] = {"passed": not below, "detail": text}
    for name, why in (skipped or {}).items():
        checks.setdefault(name, {"passed": None, "detail": f"not run: {why}"})
    suspected = any(c["passed"] is False for c in checks.values())
    return checks, suspected


# The check attacks at the main radius, and the check that each fails by finding a lower RA: any of
# them fooling a query proves it not robust, so their RAs bound RA too.
_BOUND_CHECKS = {"stronger": "attack_converged", "noise": "noise_does_not_beat_the_attack",
                 "transfer": "transfer_does_not_beat_white_box"}


def lowest_ra_of_checks(main, checks_ra):
    """Per task, the lowest RA of the main attack and of the check attacks at its radius (the keys
    of `_BOUND_CHECKS`), as `(mean, ci95, roles)`; None when no such check attack ran. Its mean is a
    valid, tighter upper bound on robust accuracy than any one of the attacks'."""
    roles = [r for r in _BOUND_CHECKS if r in checks_ra]
    if not roles:
        return None
    lowest = np.min(np.stack([np.asarray(main, np.float64)] + [np.asarray(checks_ra[r], np.float64) for r in roles]), 0)
    mean, ci = mean_ci95(lowest)
    return mean, ci, roles


def checks_status(results):
    """The checks of evaluation `results` in one line: which failed (and, when a check attack
    found RA lower than the main one, the lower bound to report instead), how many passed and which
    did not run; "checks off" without checks."""
    checks = results.get("checks")
    if checks is None:
        return "checks off"
    failed = [name for name, check in checks.items() if check["passed"] is False]
    not_run = [name for name, check in checks.items() if check["passed"] is None]
    passed = len(checks) - len(failed) - len(not_run)
    parts = []
    if failed:
        text = "CHECKS FAILED: " + ", ".join(failed)
        lowest = results.get("ra_lowest_of_checks")
        if lowest is not None and any(name in failed for name in _BOUND_CHECKS.values()):
            text += (f"; the lowest RA per task over the main attack and {', '.join(lowest['roles'])} is "
                     f"{100 * lowest['ra']:.2f}% +- {100 * lowest['ra_ci95']:.2f}%: report that or --attack=strong")
        parts.append(text)
    parts.append(f"checks: {passed} passed")
    if not_run:
        parts.append(f"{len(not_run)} not run ({', '.join(not_run)})")
    return "; ".join(parts)
