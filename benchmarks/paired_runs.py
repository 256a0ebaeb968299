"""Compare two evaluation runs on the samples both have finished (paired, exact McNemar test).

Two runs of the same config that differ in one thing (classifier, purifier, ...) attack the same test
images, so their per-sample outcomes are paired. This reads ``samples.jsonl`` of each run (finished or
still running; any schema version, through freqpure.evaluation.results.read_samples) and prints, for
clean accuracy, every attack and the worst case, both accuracies on the common samples, the
discordant pairs and the two-sided exact McNemar p-value (freqpure.evaluation.paired).

    python benchmarks/paired_runs.py runs/cifar10-diffpure-table-bundled runs/cifar10-diffpure-table-bundled-pa
"""

from __future__ import annotations

import argparse
from pathlib import Path

from freqpure.errors import FreqpureError
from freqpure.evaluation.paired import compare_samples
from freqpure.evaluation.results import read_samples


def render(run_a: Path, run_b: Path) -> str:
    """The markdown comparison of two run directories."""
    cmp = compare_samples(read_samples(run_a), read_samples(run_b))
    lines = [f"A = {run_a}, B = {run_b}: {len(cmp.common)} common samples ({cmp.finished_a} / {cmp.finished_b} "
             "finished)",
             "| metric | A | B | A right, B wrong | B right, A wrong | McNemar p |",
             "|---|---|---|---|---|---|"]
    for r in cmp.rows:
        lines.append(f"| {r.metric} | {r.accuracy_a:.1%} | {r.accuracy_b:.1%} | {r.only_a} | {r.only_b} | {r.p:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    try:
        print(render(args.run_a, args.run_b))
    except FreqpureError as err:
        raise SystemExit(f"paired_runs: error: {err}") from None


if __name__ == "__main__":
    main()
