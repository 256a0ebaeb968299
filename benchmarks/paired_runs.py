"""Compare two evaluation runs on the samples both have finished (paired, exact McNemar test).

Two runs of the same config that differ in one thing (classifier, purifier, ...) attack the same test
images, so their per-sample outcomes are paired. This reads ``samples.jsonl`` of each run (finished or
still running) and prints, for clean accuracy, every attack and the worst case, both accuracies on
the common samples, the discordant pairs and the two-sided exact McNemar p-value.

    python benchmarks/paired_runs.py runs/cifar10-diffpure-table-bundled runs/cifar10-diffpure-table-bundled-pa
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def read_samples(run_dir: Path) -> dict[int, dict]:
    """``{test-image index: sample record}`` of a run (a resumed run's later record wins)."""
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: not an evaluation run directory")
    samples = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            samples[int(record["index"])] = record
    return samples


def outcomes(record: dict) -> dict[str, bool]:
    """Per-sample correctness: clean, each attack, and the worst case (``robust``)."""
    out = {"clean": bool(record["clean_correct"])}
    out.update({name: bool(a["correct"]) for name, a in sorted(record["attacks"].items())})
    out["worst case"] = bool(record["robust"])
    return out


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    a, b = read_samples(args.run_a), read_samples(args.run_b)
    common = sorted(set(a) & set(b))
    if not common:
        raise SystemExit("the two runs have no finished sample in common")
    print(f"A = {args.run_a}, B = {args.run_b}: {len(common)} common samples ({len(a)} / {len(b)} finished)")
    print("| metric | A | B | A right, B wrong | B right, A wrong | McNemar p |")
    print("|---|---|---|---|---|---|")
    for metric in outcomes(a[common[0]]):
        pa = [outcomes(a[i])[metric] for i in common]
        pb = [outcomes(b[i])[metric] for i in common]
        only_a = sum(x and not y for x, y in zip(pa, pb))
        only_b = sum(y and not x for x, y in zip(pa, pb))
        print(f"| {metric} | {sum(pa) / len(common):.1%} | {sum(pb) / len(common):.1%} | {only_a} | {only_b} | "
              f"{mcnemar_p(only_a, only_b):.3f} |")


if __name__ == "__main__":
    main()
