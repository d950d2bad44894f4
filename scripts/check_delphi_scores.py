#!/usr/bin/env python3
"""Recompute saelab autointerp's per-scorer means from its delphi-layout score files,
with the Python standard library only, and compare them with summary.json.

    scripts/check_delphi_scores.py OUT [--control]

OUT is an `saelab autointerp --out` folder. Each `scores/{scorer}/{module}_latent{i}.txt`
is read as delphi's `parse_score_file` reads it: a JSON list of items with the fields
`str_tokens, activations, distance, activating, prediction, probability, correct`.
Per latent, an LLM-judged scorer (detection, fuzz) gets delphi's "accuracy", the
balanced accuracy 1/2 (TP/P + TN/N) of the items that have a prediction; a ranking
scorer (embedding, surprisal) gets the AUROC of `probability`, activating against
not, ties counting one half. The mean over the latents that summary.json lists must
equal its `real_mean` (and, with --control, the `shuffled/` files its
`shuffled_mean`) to 1e-9. Exits 1 on any difference.
"""

import json
import os
import sys


def balanced_accuracy(items):
    scored = [i for i in items if i["prediction"] is not None]
    pos = [i for i in scored if i["activating"]]
    neg = [i for i in scored if not i["activating"]]
    if not pos and not neg:
        return None
    tp = sum(1 for i in pos if i["prediction"])
    tn = sum(1 for i in neg if not i["prediction"])
    rec_pos = tp / len(pos) if pos else 0.0
    rec_neg = tn / len(neg) if neg else 0.0
    return 0.5 * (rec_pos + rec_neg)


def auroc(items):
    pairs = [(i["probability"], i["activating"]) for i in items if i["probability"] is not None]
    pos = [p for p, a in pairs if a]
    neg = [p for p, a in pairs if not a]
    if not pos or not neg:
        return None
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    control = "--control" in sys.argv
    if len(args) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = args[0]
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    failures = 0
    for s in summary["scorers"]:
        scorer = s["scorer"]
        metric = balanced_accuracy if s["metric"] == "balanced_accuracy" else auroc
        latents = [row[0] for row in s["per_latent"]]
        runs = [("real_mean", out)] + ([("shuffled_mean", os.path.join(out, "shuffled"))] if control else [])
        for field, root in runs:
            values = []
            folder = os.path.join(root, "scores", scorer)
            names = {}
            for name in os.listdir(folder):
                latent = int(name.rsplit("_latent", 1)[1].split(".")[0])
                names[latent] = name
            for latent in latents:
                with open(os.path.join(folder, names[latent])) as f:
                    items = json.load(f)
                values.append(metric(items))
            mean = sum(values) / len(values) if values else 0.0
            ok = abs(mean - s[field]) <= 1e-9
            failures += not ok
            print(f"{scorer} {field}: {mean:.6f} from {len(values)} score files, summary {s[field]:.6f}"
                  f" {'ok' if ok else 'DIFFERS'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
