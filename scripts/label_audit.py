"""Score a blind reading of val images against their labels and a run's ensemble.

    python scripts/label_audit.py scripts/label_audit/full-8.tsv

The TSV (see the header of the one committed) holds, per image: its label, the ensemble's answer and a
reader's forced-choice reading made without seeing either. The sample is half the ensemble's errors and
half the rest, so each half's shares are weighted back by the ensemble's val accuracy (the TSV's
``# ensemble_val_accuracy:`` line) to estimate what a reader's agreement with the labels is over all of val, and how
high a model could go if it fixed exactly the errors where the reader sides with the label.
"""
from __future__ import annotations

import argparse
import csv

from scipy.stats import binomtest

from raymotion.console import print_table


ACCURACY_LINE = "# ensemble_val_accuracy:"


def read_audit(path: str) -> tuple[list[dict[str, str]], float]:
    """The readings, and the ensemble's val accuracy the sample was drawn against (its header line)."""
    with open(path, newline="") as f:
        lines = f.readlines()
    accuracy = [line for line in lines if line.startswith(ACCURACY_LINE)]
    if len(accuracy) != 1:
        raise SystemExit(f"{path}: needs one '{ACCURACY_LINE} <fraction>' line")
    rows = csv.DictReader([line for line in lines if not line.startswith("#")], delimiter="\t")
    return list(rows), float(accuracy[0][len(ACCURACY_LINE):].split()[0])


def share(rows: list[dict[str, str]], column: str) -> tuple[int, int, tuple[float, float]]:
    k = sum(r["reading"] == r[column] for r in rows)
    ci = binomtest(k, len(rows)).proportion_ci(confidence_level=0.95, method="wilson")
    return k, len(rows), (ci.low, ci.high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ratings", help="TSV: label, ensemble, reading, certainty per image")
    args = parser.parse_args()
    rows, acc = read_audit(args.ratings)
    wrong = [r for r in rows if r["label"] != r["ensemble"]]
    right = [r for r in rows if r["label"] == r["ensemble"]]
    table = []
    for name, group in [("ensemble wrong", wrong), ("ensemble right", right),
                        ("ensemble wrong, reader sure", [r for r in wrong if r["certainty"] == "sure"]),
                        ("ensemble right, reader sure", [r for r in right if r["certainty"] == "sure"])]:
        cells = []
        for column in ("label", "ensemble"):
            k, n, (low, high) = share(group, column)
            cells.append(f"{k} ({k / n:.2f}, {low:.2f}-{high:.2f})")
        table.append([name, len(group), *cells])
    print_table(table, ["images", "n", "reading = label", "reading = ensemble"], "<>>>")
    k_wrong, n_wrong, (low, high) = share(wrong, "label")
    k_right, n_right, _ = share(right, "label")
    print(f"\nreader vs labels over all val (halves weighted by accuracy {acc:.4f}): "
          f"{acc * k_right / n_right + (1 - acc) * k_wrong / n_wrong:.3f}")
    print(f"ensemble + every error where the reader sides with the label: {acc + (1 - acc) * k_wrong / n_wrong:.3f} "
          f"(95% interval {acc + (1 - acc) * low:.3f}-{acc + (1 - acc) * high:.3f})")


if __name__ == "__main__":
    main()
