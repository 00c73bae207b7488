"""The one-line attack description printed beside every RA names what actually ran."""

from tf_rmaml.attacks.evaluation import AttackConfig
from tf_rmaml.attacks.summary import attack_summary


def test_strong_is_described_by_its_runs_not_by_the_pgd_flags():
    # --attack=strong with the default PGD flags (10 steps, 1 restart) runs PGD-20 x 5 and APGD-100:
    # reporting "10 steps, 1 restart" beside its RA would understate the attack.
    attack = AttackConfig(name="strong", eps=10 / 255).describe()
    text = attack_summary(attack, 240)
    assert text == ("strong = worst case per query of PGD-20 x 5 restarts (step 2/255) + APGD-CE-100 + "
                    "APGD-DLR-100, L-inf eps 10/255, 240 tasks")
    assert "10 steps" not in text and "1 restart" not in text


def test_pgd_fgsm_noise_and_targets():
    pgd = AttackConfig(name="pgd", eps=8 / 255, steps=7, step_size=1 / 255, restarts=3, norm="l2").describe()
    assert attack_summary(pgd) == "PGD-7 x 3 restarts (step 1/255), L2 eps 8/255"
    assert attack_summary(pgd, with_eps=False) == "PGD-7 x 3 restarts (step 1/255), L2"
    one = AttackConfig(name="pgd", eps=2 / 255, target="support").describe()
    assert attack_summary(one, 100) == ("PGD-10 (step 2/255, 1 restart), L-inf eps 2/255, "
                                        "on the support set before fine-tuning, 100 tasks")
    assert attack_summary(AttackConfig(name="fgsm_rs", eps=10 / 255).describe()).startswith("FGSM-RS, L-inf eps 10/255")
    assert attack_summary(AttackConfig(name="apgd_dlr", steps=100).describe()).startswith("APGD-DLR-100, ")
    noise = AttackConfig(name="noise", restarts=2, target="transfer").describe()
    assert attack_summary(noise) == "uniform noise x 2 draws, L-inf eps 10/255, transferred from a surrogate model"


def test_an_older_json_without_runs_still_reads():
    old = {"attack": "pgd", "eps_255": 8.0, "steps": 10, "step_size": 2 / 255, "restarts": 1}
    assert attack_summary(old, 2400) == "pgd (10 steps, step 2/255, 1 restart(s)), L-inf eps 8/255, 2400 tasks"
