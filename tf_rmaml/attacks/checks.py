"""Sanity checks that run with every robust evaluation, to catch weak attacks and gradient masking.

Each check compares robust accuracies measured on the *same* tasks. A violated check does not
stop the evaluation: it is a warning and sets `masking_suspected` in the results.
"""

import dataclasses

from tf_rmaml.attacks.evaluation import AttackConfig


def check_attacks(main):
    """The extra attacks the checks need, besides `main` and the eps curve.

    Returns a dict name -> AttackConfig: the same attack at eps 0; for query attacks, uniform
    noise of the same radius and the same attack transferred from an independently initialised
    surrogate model; and (for iterative attacks) the same attack with twice the steps and one
    more restart.
    """
    if main.name == "none":
        return {}
    extra = {"eps0": dataclasses.replace(main, eps=0.0)}
    if main.target == "query":
        extra["noise"] = AttackConfig("noise", eps=main.eps, steps=1, step_size=main.step_size,
                                      restarts=max(main.restarts, 3), norm=main.norm)
        extra["transfer"] = dataclasses.replace(main, target="transfer", restarts=1)
    if main.name in ("pgd", "apgd_ce", "apgd_dlr"):
        extra["stronger"] = dataclasses.replace(main, steps=2 * main.steps, restarts=main.restarts + 1)
    return extra


def run_checks(sa, main_ra, main_eps, checks_ra, curve, tolerance):
    """Evaluates the checks.

    Args:
      sa: standard accuracy (after fine-tuning).
      main_ra: robust accuracy under the main attack.
      main_eps: the main attack's radius.
      checks_ra: dict name -> RA for the attacks of `check_attacks`.
      curve: list of (eps, ra) of the same attack at other radii.
      tolerance: slack for comparisons of two RAs measured with random starts.

    Returns:
      `(checks, masking_suspected)`: checks maps name -> {"passed": bool, "detail": str}.
    """
    checks = {}
    if "eps0" in checks_ra:
        ok = abs(checks_ra["eps0"] - sa) < 1e-9
        checks["ra_at_eps0_equals_sa"] = {"passed": ok, "detail": f"RA(eps=0)={checks_ra['eps0']:.4f}, SA={sa:.4f}"}
    points = sorted(set([(main_eps, main_ra)] + list(curve)))
    rising = [(a, b) for a, b in zip(points, points[1:]) if b[1] > a[1] + tolerance]
    checks["ra_does_not_rise_with_eps"] = {
        "passed": not rising,
        "detail": "; ".join(f"RA {a[1]:.4f} at eps {a[0]:.4f} < RA {b[1]:.4f} at eps {b[0]:.4f}" for a, b in rising)
        or f"{len(points)} radii",
    }
    if "stronger" in checks_ra:
        ok = checks_ra["stronger"] <= main_ra + tolerance
        checks["more_steps_and_restarts_do_not_raise_ra"] = {
            "passed": ok, "detail": f"RA stronger={checks_ra['stronger']:.4f}, RA main={main_ra:.4f}"}
        # The other direction: if twice the steps and one more restart still lower RA, the attack
        # had not converged and its RA overstates robustness.
        ok = checks_ra["stronger"] >= main_ra - tolerance
        checks["attack_converged"] = {
            "passed": ok, "detail": f"RA stronger={checks_ra['stronger']:.4f}, RA main={main_ra:.4f}"
            + ("" if ok else ": the attack had not converged; report --attack=strong")}
    if "noise" in checks_ra:
        ok = checks_ra["noise"] >= main_ra - tolerance
        checks["noise_does_not_beat_the_attack"] = {
            "passed": ok, "detail": f"RA noise={checks_ra['noise']:.4f}, RA attack={main_ra:.4f}"}
    if "transfer" in checks_ra:
        ok = checks_ra["transfer"] >= main_ra - tolerance
        checks["transfer_does_not_beat_white_box"] = {
            "passed": ok, "detail": f"RA transfer (independently initialised surrogate)={checks_ra['transfer']:.4f}, "
                                    f"RA white-box={main_ra:.4f}"}
    suspected = any(not c["passed"] for c in checks.values())
    return checks, suspected
