"""Writes the R-MAML flag files of flags/ from the MAML ones (one per row of the paper's comparison).

Each method's file is its dataset's MAML file (same net, inner loop, meta-batch, schedule) plus
the method's flags, so rows differ only in the method. Run from the repository root after
changing a MAML file or a method below:

  python scripts/make_flagfiles.py
"""

import os

FLAGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flags")

# Train eps = the evaluation eps of the paper (MiniImageNet 2/255) or of its code (Omniglot
# 10/255, CIFAR-FS 8/255). Unlabeled images: the paper's are outside images matched to the
# training classes, which we do not have; the nearest in-data analogue is used (see docs).
DATASETS = {
    "omniglot": {"eps_255": 10, "unlabeled": ["--unlabeled_source=split", "--unlabeled_classes=other",
                                              "--unlabeled_per_class=4"]},
    "cifar_fs": {"eps_255": 8, "unlabeled": ["--unlabeled_source=split", "--unlabeled_classes=task",
                                             "--unlabeled_per_class=5"]},
    "miniimagenet": {"eps_255": 2, "unlabeled": ["--unlabeled_source=split", "--unlabeled_classes=task",
                                                 "--unlabeled_per_class=20"]},
}

METHODS = {
    "rmaml_out_at_fgsm": ("R-MAML_out, AT (gamma_out 0.2), FGSM-RS in the meta-update",
                          ["--method=rmaml_out", "--regularizer=at", "--gamma_out=0.2", "--train_attack=fgsm_rs"]),
    "rmaml_out_at_pgd": ("R-MAML_out, AT (gamma_out 0.2), PGD-10 in the meta-update",
                         ["--method=rmaml_out", "--regularizer=at", "--gamma_out=0.2", "--train_attack=pgd",
                          "--train_attack_steps=10"]),
    "rmaml_both_at": ("R-MAML_both, AT in the inner loop (gamma_in 0.1) and the meta-update (gamma_out 0.2), "
                      "FGSM-RS",
                      ["--method=rmaml_both", "--regularizer=at", "--gamma_out=0.2", "--gamma_in=0.1",
                       "--train_attack=fgsm_rs"]),
    "rmaml_out_trades": ("R-MAML_out, TRADES (gamma_out 5), FGSM-RS on the KL",
                         ["--method=rmaml_out", "--regularizer=trades", "--gamma_out=5", "--train_attack=fgsm_rs"]),
    "rmaml_out_trades_unlabeled": ("R-MAML_out, TRADES (gamma_out 5) with unlabeled images in the KL term",
                                   ["--method=rmaml_out", "--regularizer=trades", "--gamma_out=5",
                                    "--train_attack=fgsm_rs"]),
    "adml": ("ADML (Yin et al. 2018), FGSM-RS", ["--method=adml", "--regularizer=at", "--train_attack=fgsm_rs"]),
    "aq": ("Adversarial querying (Goldblum et al.), PGD-7 on the query",
           ["--method=aq", "--regularizer=at", "--train_attack=pgd", "--train_attack_steps=7"]),
    "rmaml_out_trades_cl": ("R-MAML_out, TRADES (gamma_out 5) + the auxiliary contrastive task (gamma_cl 0.1, clean views)",
                            ["--method=rmaml_out", "--regularizer=trades", "--gamma_out=5", "--train_attack=fgsm_rs",
                             "--gamma_cl=0.1", "--cl_views=clean"]),
    "rmaml_out_trades_cl_adv": ("R-MAML_out, TRADES (gamma_out 5) + the auxiliary contrastive task (gamma_cl 0.1, "
                                "one view adversarial to the contrastive loss)",
                                ["--method=rmaml_out", "--regularizer=trades", "--gamma_out=5",
                                 "--train_attack=fgsm_rs", "--gamma_cl=0.1", "--cl_views=adversarial"]),
    "rmaml_out_trades_unlabeled_cl": ("R-MAML_out, TRADES (gamma_out 5) with unlabeled images + the contrastive task "
                                      "(gamma_cl 0.1)",
                                      ["--method=rmaml_out", "--regularizer=trades", "--gamma_out=5",
                                       "--train_attack=fgsm_rs", "--gamma_cl=0.1", "--cl_views=clean"]),
    "rmaml_out_at_fgsm_head": ("R-MAML_out, AT, FGSM-RS, fine-tuning only the head (train and test)",
                               ["--method=rmaml_out", "--regularizer=at", "--gamma_out=0.2", "--train_attack=fgsm_rs",
                                "--finetune=head", "--finetune_test=head"]),
}

BASES = [
    ("omniglot", "omniglot_maml_5w1s"),
    ("omniglot", "omniglot_maml_5w1s_cpu"),
    ("cifar_fs", "cifar_fs_maml_5w1s"),
    ("cifar_fs", "cifar_fs_maml_5w1s_cpu"),
    ("miniimagenet", "miniimagenet_maml_5w1s"),
    ("miniimagenet", "miniimagenet_maml_5w5s"),
]


def main():
    written = []
    for dataset, base in BASES:
        path = os.path.join(FLAGS_DIR, base + ".flags")
        with open(path) as f:
            base_lines = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
        for name, (title, lines) in METHODS.items():
            extra = list(lines) + [f"--train_eps_255={DATASETS[dataset]['eps_255']}"]
            if "_unlabeled" in name:
                extra += DATASETS[dataset]["unlabeled"]
            out = os.path.join(FLAGS_DIR, base.replace("_maml_", f"_{name}_") + ".flags")
            header = [
                f"# {title}.",
                f"# Generated by scripts/make_flagfiles.py from {base}.flags (same data, net, inner loop and schedule).",
                f"# Training eps {DATASETS[dataset]['eps_255']}/255 (the evaluation eps for {dataset}).",
            ]
            with open(out, "w") as f:
                f.write("\n".join(header + base_lines + extra) + "\n")
            written.append(os.path.basename(out))
    print("\n".join(written))


if __name__ == "__main__":
    main()
