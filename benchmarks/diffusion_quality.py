"""Compare diffusion models as purifiers, paired: same test images, same noise, same classifier.

Issue #14's measurements of a new ε-model against the current one:

* one-shot x0-MSE at step indices 99 and 49 (``t = 100`` / ``t = 50``) on the first images (same noise);
* clean accuracy after one purification, per plan, with the drop from the unpurified accuracy, the
  95% Wilson interval and, for every model after the first, the exact McNemar test against the first
  model on the same images (b = images only this model gets right, c = only the first one).

    python benchmarks/diffusion_quality.py --diffusion cifar10-ddpm-small --diffusion cifar10-ddpm-pure --n 1000
    python benchmarks/diffusion_quality.py --diffusion A --diffusion B --n 256 --only DiffPure

    # one model per process (two cores), then pair the records afterwards:
    python benchmarks/diffusion_quality.py --diffusion cifar10-ddpm-small --json small.json
    python benchmarks/diffusion_quality.py --diffusion cifar10-ddpm-pure --json pure.json
    python benchmarks/diffusion_quality.py --combine small.json pure.json

Prints markdown tables; ``--json FILE`` also writes the numbers, the settings and every image's
correctness (rewritten after each plan, so a stopped run keeps what it finished). Records made with the
same images, noise seed and classifier pair image by image, whichever process made them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import freqpure
from freqpure._fileio import atomic_path
from freqpure.config import PurifierConfig, build_purifier, to_dict
from freqpure.data import eval_subset
from freqpure.evaluation.paired import mcnemar_p
from freqpure.evaluation.results import wilson_interval
from freqpure.runtime import configure_threads
from freqpure.samplers import StepNoise
from freqpure.training import denoise_mse

PLANS = {
    "DiffPure t*=100, 100 DDPM steps": PurifierConfig(method="diffpure", rounds="100:100"),
    "DiffPure v2 plan 20:5*5,50:5*5": PurifierConfig(method="diffpure", rounds="20:5*5,50:5*5"),
    "FreqPure paper, v2 plan, r=3": PurifierConfig(rounds="20:5*5,50:5*5", amp_radius=3, phase_radius=3),
    "FreqPure official, v2 plan, r=3": PurifierConfig(rounds="20:5*5,50:5*5", amp_radius=3, phase_radius=3,
                                                      variant="official"),
    "FreqPure paper t*=200, 100 steps, r=10": PurifierConfig(rounds="200:100"),
    "DiffPure t*=100, 5 DDPM steps": PurifierConfig(method="diffpure", rounds="100:5"),
}


def correct_after(purifier, classifier, x: torch.Tensor, y: torch.Tensor, batch: int, seed: int) -> torch.Tensor:
    """Per image: is the classifier right on one purification? Batch ``b`` draws from ``StepNoise(seed).child(b)``."""
    out = []
    for b, start in enumerate(range(0, len(x), batch)):
        xb, yb = x[start : start + batch], y[start : start + batch]
        purified = purifier(xb, StepNoise(seed).child(b))
        out.append(classifier(purified).argmax(-1) == yb)
    return torch.cat(out)


def _mask(bits: str) -> torch.Tensor:
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


PAIRING_KEYS = ("n", "subset_seed", "seed", "classifier", "batch")


RECORD_KEYS = (*PAIRING_KEYS, "base_accuracy", "models", "mse", "plans")


def read_record(path: Path) -> dict:
    """A ``--json`` record of this script; one clear line (SystemExit) for a missing, broken or older file."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SystemExit(f"--combine {path}: cannot read a JSON record ({err})") from None
    missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise SystemExit(f"--combine {path}: not a per-image record of this script (no {', '.join(missing)}); "
                         "records from before per-image correctness cannot be paired")
    return record


def merge_records(records: list[dict]) -> dict:
    """One record from several single-run records made on the same images, noise and classifier.

    Refuses records whose pairing settings differ (they would not pair image by image). Models keep the
    order of the records; a plan lists the models that measured it.
    """
    first = records[0]
    for other in records[1:]:
        for key in PAIRING_KEYS:
            if other.get(key) != first.get(key):
                raise SystemExit(f"records do not pair: {key} = {first.get(key)!r} vs {other.get(key)!r}")
        if other["base_accuracy"] != first["base_accuracy"]:
            raise SystemExit("records do not pair: the unpurified accuracies differ")
    merged = {key: first[key] for key in PAIRING_KEYS} | {"base_accuracy": first["base_accuracy"], "models": [],
                                                          "mse": {}, "plans": {}}
    for record in records:
        merged["models"] += [m for m in record["models"] if m not in merged["models"]]
        merged["mse"].update(record["mse"])
        for plan, entry in record["plans"].items():
            target = merged["plans"].setdefault(plan, {"config": entry["config"], "results": {}})
            if target["config"] != entry["config"]:
                raise SystemExit(f"records do not pair: plan {plan!r} has different settings")
            for name in entry["results"]:
                if name in target["results"]:
                    raise SystemExit(f"model {name!r} measured plan {plan!r} in two records; give each once")
            target["results"].update(entry["results"])
    return merged


def paired_rows(record: dict) -> list[str]:
    """Markdown rows (plan, model, accuracy, drop, McNemar against the plan's first model, time)."""
    n, base = record["n"], record["base_accuracy"]
    rows = []
    for plan, entry in record["plans"].items():
        first = None
        for name in [m for m in record["models"] if m in entry["results"]]:
            result = entry["results"][name]
            ok = _mask(result["correct_images"])
            k = int(ok.sum())
            lo, hi = wilson_interval(k, n)
            versus = "—"
            if first is None:
                first = ok
            else:
                b, c = int((ok & ~first).sum()), int((~ok & first).sum())
                versus = f"{b} / {c}, p = {mcnemar_p(b, c):.3g}"
            rows.append(f"| {plan} | {name} | {k / n:.1%} [{100 * lo:.1f}, {100 * hi:.1f}] | "
                        f"{100 * (base - k / n):+.1f} | {versus} | {result['seconds_per_image']:.3f} |")
    return rows


def print_tables(record: dict) -> None:
    print("| model | x0-MSE t=100 | x0-MSE t=50 | noisy-input MSE t=100 |")
    print("|---|---|---|---|")
    for name, m in record["mse"].items():
        print(f"| {name} | {m['t100']:.5f} | {m['t50']:.5f} | {m['noisy_t100']:.4f} |")
    print(f"\nunpurified accuracy: {record['base_accuracy']:.2%} (n = {record['n']})\n")
    print("| plan | model | accuracy [95% CI] | drop (points) | vs first model: b / c, McNemar p | s / image |")
    print("|---|---|---|---|---|---|")
    print("\n".join(paired_rows(record)))


def _write(record: dict, path: Path | None) -> None:
    if path is not None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diffusion", action="append", metavar="NAME|PATH",
                        help="a diffusion model; repeat for more (the first is the baseline)")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                        help="pair recorded --json files (the first file's model is the baseline) and print the tables")
    parser.add_argument("--classifier", default="cifar10-resnet-small")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--mse-images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--only", action="append", default=None,
                        help="run only the plans whose name contains this text (repeat for several)")
    parser.add_argument("--no-mse", action="store_true", help="skip the x0-MSE table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here (must not exist)")
    args = parser.parse_args()
    if args.combine:
        if args.diffusion:
            parser.error("give either --diffusion (measure) or --combine (pair records), not both")
        print_tables(merge_records([read_record(p) for p in args.combine]))
        return
    if not args.diffusion:
        parser.error("give --diffusion (one or more) or --combine")
    if args.json is not None and args.json.exists():
        parser.error(f"--json {args.json} exists; give a new file")
    threads = configure_threads(args.threads)

    data = eval_subset(args.n, seed=0)
    classifier = freqpure.load_classifier(args.classifier).eval().requires_grad_(False)
    models = {name: freqpure.load_diffusion(name).eval().requires_grad_(False) for name in args.diffusion}
    plans = {k: v for k, v in PLANS.items() if not args.only or any(text in k for text in args.only)}
    record = {"n": args.n, "subset_seed": 0, "seed": args.seed, "classifier": args.classifier, "batch": args.batch,
              "models": args.diffusion, "threads": threads, "torch": torch.__version__, "mse": {}, "plans": {}}
    print(f"n = {args.n} class-balanced test images (subset seed 0), classifier {args.classifier}, noise seed "
          f"{args.seed}, {threads} thread(s), fp32")

    with torch.no_grad():
        if not args.no_mse:
            x0 = data.x[: args.mse_images] * 2 - 1
            print(f"\n| model | x0-MSE t=100 | x0-MSE t=50 | noisy-input MSE t=100 |  ({len(x0)} images, same noise)")
            print("|---|---|---|---|")
            for name, model in models.items():
                m100, noisy = denoise_mse(model, x0, 99, seed=args.seed)
                m50, _ = denoise_mse(model, x0, 49, seed=args.seed)
                record["mse"][name] = {"t100": m100, "t50": m50, "noisy_t100": noisy, "images": len(x0)}
                print(f"| {name} | {m100:.5f} | {m50:.5f} | {noisy:.4f} |", flush=True)

        base_acc = float(torch.cat([classifier(data.x[i : i + args.batch]).argmax(-1) == data.y[i : i + args.batch]
                                    for i in range(0, args.n, args.batch)]).float().mean())
        record["base_accuracy"] = base_acc
        print(f"\nunpurified accuracy: {base_acc:.2%}\n")
        print("| plan | model | accuracy [95% CI] | drop (points) | vs first model: b / c, McNemar p | s / image |")
        print("|---|---|---|---|---|---|")
        for plan, cfg in plans.items():
            record["plans"][plan] = {"config": to_dict(cfg), "results": {}}
            for name, model in models.items():
                purifier = build_purifier(cfg, model, seed=args.seed)
                started = time.perf_counter()
                ok = correct_after(purifier, classifier, data.x, data.y, args.batch, args.seed)
                per_image = (time.perf_counter() - started) / args.n
                k = int(ok.sum())
                lo, hi = wilson_interval(k, args.n)
                record["plans"][plan]["results"][name] = {
                    "correct": k, "accuracy": k / args.n, "ci95": [lo, hi],
                    "drop_points": 100 * (base_acc - k / args.n), "seconds_per_image": per_image,
                    "correct_images": "".join("1" if v else "0" for v in ok.tolist())}
                print(paired_rows({**record, "plans": {plan: record["plans"][plan]}})[-1], flush=True)
            _write(record, args.json)
    _write(record, args.json)


if __name__ == "__main__":
    main()
