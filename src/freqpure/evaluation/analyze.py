"""The frequency analysis pipeline (``freqpure analyze``): damage to amplitude and phase vs frequency, for an
attack and the purifiers.

On a deterministic class-balanced CIFAR-10 subset: attack the classifier with PGD (L∞, 8/255 by
default), purify the adversarial images with DiffPure and with FreqPure (same plan, same noise
draws, so the two differ only by FreqPure's frequency exchange), and measure, per radial frequency
band, the amplitude and phase damage of each relative to the clean image
(:mod:`freqpure.analysis`). :func:`run_analysis` writes

* ``analysis.json`` (``format: freqpure-analysis/2``) — settings, per-band means with 95% confidence
  intervals, Spearman correlation of band index vs damage, FreqPure/DiffPure damage ratio in the bands inside
  FreqPure's exchange radius, accuracies, targets, versions and timings. ``settings.all`` is the
  :class:`AnalyzeSettings`, the purifier nested under ``purifier`` (format 2); format 1 files held its keys
  flat (``rounds``, ``amp_radius``, ``mode``, ...) and said ``mode: reference`` for ``official``:
  :func:`analysis_in_current_form` reads either as format 2;
* ``analysis_amplitude.png``, ``analysis_phase.png``, ``analysis_ratio.png`` — the plots;
* ``damage.npz`` — the per-image, per-band damage of every case (float64 ``[n, K]``).

The attack is against the *undefended* classifier: the analysis is about what adversarial
perturbations do to the spectrum and what each purifier does to it, not about robustness (that is
``freqpure evaluate``). ``freqpure report DIR`` renders the result as HTML.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from freqpure.analysis import BandDamage, RadialBands, band_damage, summarise_cases
from freqpure.config import PurifierConfig, nested_alias
from freqpure.errors import UsageError
from freqpure.noise import analysis_attack_stream, analysis_batch_stream, analysis_start_generator

__all__ = [
    "ANALYSIS_FORMAT",
    "AnalyzeSettings",
    "analysis_in_current_form",
    "AttackFn",
    "Measurement",
    "pgd_attack",
    "measure",
    "write_analysis",
    "targets",
    "run_analysis",
]

AttackFn = Callable[[Tensor, Tensor, int], Tensor]
"""``attack(x [B,C,H,W] in [0,1], y [B], batch_index) -> x_adv [B,C,H,W] in [0,1]``."""

SPEARMAN_TARGET = 0.9


# ---------------------------------------------------------------------------------------------
# The attack (freqpure.attacks)
# ---------------------------------------------------------------------------------------------
def pgd_attack(
    classifier: nn.Module, *, eps: float = 8 / 255, steps: int = 20, step_size: float = 2 / 255,
    random_start: bool = True, seed: int = 0,
) -> AttackFn:
    """PGD L∞ against the bare ``classifier`` (cross-entropy), from :mod:`freqpure.attacks`.

    Per sample the iterate with the highest loss is kept (``keep="best"``). Batch ``i`` seeds its
    random start with ``seed + i`` (nothing else is random: the undefended classifier is deterministic).
    """
    from freqpure.attacks import AttackModel, EOTGradient, pgd

    model = AttackModel(classifier)

    def attack(x: Tensor, y: Tensor, batch_index: int) -> Tensor:
        oracle = EOTGradient(model, eot=1, loss="ce", seed=analysis_attack_stream(seed, batch_index))
        gen = analysis_start_generator(seed, batch_index)  # pgd draws its random start on the CPU
        result = pgd(oracle, x, y, norm="linf", eps=eps, steps=steps, step_size=step_size,
                     random_init=random_start, keep="best", generator=gen)
        return result.x_adv.detach()

    return attack


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
@dataclass
class Measurement:
    """Everything measured on ``n`` images.

    ``damage``: case → :class:`BandDamage` (``adversarial``, then one per purifier, optionally
    ``clean_<purifier>``); ``correct``: case → bool ``[n]`` (classifier correct on that case's
    images; ``clean`` included); ``timings``: seconds per stage.
    """

    damage: dict[str, BandDamage]
    correct: dict[str, Tensor]
    timings: dict[str, float] = field(default_factory=dict)
    linf: Tensor | None = None  # [n] L∞ norm of the adversarial perturbation


def _predict(classifier: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return classifier(x).argmax(1)


def measure(
    x: Tensor,
    y: Tensor,
    classifier: nn.Module,
    purifiers: Mapping[str, nn.Module],
    attack: AttackFn,
    *,
    bands: RadialBands | None = None,
    batch_size: int = 64,
    seed: int = 0,
    amp_floor: float = 1e-3,
    include_clean: bool = False,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> Measurement:
    """Attack, purify and measure band damage on ``x`` ``[n, C, H, W]`` in [0, 1] with labels ``y`` ``[n]``.

    Every purifier gets the same noise for the same batch (:func:`~freqpure.noise.analysis_batch_stream`),
    so their differences are paired. With ``include_clean`` the purifiers also run on the clean
    images (cases ``clean_<name>``: what purification alone does to the spectrum).
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else x.device
    bands = bands or RadialBands.integer(x.shape[-2], x.shape[-1])
    parts: dict[str, list[BandDamage]] = {}
    correct: dict[str, list[Tensor]] = {}
    timings = {"attack": 0.0, "purify": 0.0, "measure": 0.0}
    linf = []
    starts = range(0, x.shape[0], batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="analyze", unit="batch")
    for b, start in enumerate(starts):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        t0 = time.perf_counter()
        adv = attack(xb, yb, b).detach()
        timings["attack"] += time.perf_counter() - t0
        linf.append((adv - xb).abs().flatten(1).amax(1).cpu())
        images = {"clean": xb, "adversarial": adv}
        t0 = time.perf_counter()
        with torch.no_grad():
            for name, purifier in purifiers.items():
                noise = analysis_batch_stream(seed, b)
                images[name] = purifier(adv, noise=noise)
                if include_clean:
                    images[f"clean_{name}"] = purifier(xb, noise=noise)
        timings["purify"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for name, imgs in images.items():
            correct.setdefault(name, []).append((_predict(classifier, imgs) == yb).cpu())
            if name != "clean":
                parts.setdefault(name, []).append(band_damage(imgs.cpu(), xb.cpu(), bands, amp_floor=amp_floor))
        timings["measure"] += time.perf_counter() - t0
    damage = {name: BandDamage.concat(p) for name, p in parts.items()}
    return Measurement(damage, {k: torch.cat(v) for k, v in correct.items()}, timings, torch.cat(linf))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def targets(summary: Mapping[str, Any], ratio_key: str = "freqpure/diffpure") -> dict[str, dict[str, Any]]:
    """The issue's pass/fail checks on a :func:`summarise_cases` result.

    * adversarial damage rises with frequency: Spearman(band, damage) ≥ 0.9, amplitude and phase;
    * FreqPure damages the low bands less than DiffPure: mean ratio < 1 in every band inside the
      exchange radius (``all_upper_below_1`` also says whether every 95% interval lies below 1).
    """
    out: dict[str, dict[str, Any]] = {}
    adv = summary["cases"].get("adversarial")
    if adv is not None:
        for q in ("amplitude", "phase"):
            rho = adv[q]["spearman"]
            ok = rho is not None and math.isfinite(rho) and rho >= SPEARMAN_TARGET
            out[f"adversarial_{q}_spearman"] = {"value": rho, "target": f">= {SPEARMAN_TARGET}", "pass": bool(ok)}
    entry = summary.get("ratios", {}).get(ratio_key)
    if entry is not None:
        for q in ("amplitude", "phase"):
            stats = entry.get(q)
            if not stats:
                continue
            means = [m for m in stats["mean"] if m is not None]  # None: 0/0, e.g. the phase of the DC bin
            uppers = [u for u in stats["upper"] if u is not None]
            out[f"{ratio_key}_low_{q}_ratio"] = {
                "value": max(means) if means else None,
                "target": f"< 1 in every band k <= {stats.get('radius', entry['radius'])} with a defined ratio "
                "(value: the largest ratio)",
                "pass": bool(means) and all(m < 1 for m in means),
                "all_upper_below_1": bool(uppers) and all(u < 1 for u in uppers),
                "undefined_bands": [b for b, m in zip(stats.get("bands", entry["bands"]), stats["mean"]) if m is None],
            }
    return out


def _accuracy(correct: Mapping[str, Tensor]) -> dict[str, dict[str, float | int]]:
    return {name: {"correct": int(c.sum()), "n": int(c.numel()), "accuracy": float(c.double().mean())}
            for name, c in correct.items()}


def write_analysis(
    out_dir: str | Path,
    measurement: Measurement,
    *,
    settings: Mapping[str, Any],
    low_radius: Mapping[str, float | None] | float | None,
    ci: Mapping[str, Any] | None = None,
    plots: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Summarise ``measurement`` and write ``analysis.json``, ``damage.npz`` and the PNG plots to ``out_dir``.

    ``low_radius``: FreqPure's exchange radius (``{"amplitude": r_a, "phase": r_p}`` or one number);
    ``ci``: keyword arguments of :func:`freqpure.analysis.summarise` (method, level, n_boot, seed).
    Returns the dict written to ``analysis.json``.
    """
    from freqpure._fileio import write_json_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ratios = [("freqpure", "diffpure")] if {"freqpure", "diffpure"} <= set(measurement.damage) else []
    summary = summarise_cases(measurement.damage, ratios=ratios, low_radius=low_radius, **dict(ci or {}))
    result: dict[str, Any] = {
        "format": ANALYSIS_FORMAT,
        "settings": dict(settings),
        "summary": summary,
        "targets": targets(summary),
        "accuracy": _accuracy(measurement.correct),
        "perturbation_linf_max": float(measurement.linf.max()) if measurement.linf is not None else None,
        "timings": {k: round(v, 3) for k, v in measurement.timings.items()},
        "plots": {},
        **dict(extra or {}),
    }
    arrays = {f"{name}_{q}": getattr(d, q).numpy() for name, d in measurement.damage.items()
              for q in ("amplitude", "phase")}
    np.savez_compressed(out_dir / "damage.npz", **arrays, band_edges=np.asarray(summary["bands"]["edges"]))
    if plots:
        from freqpure.plots import damage_plot, ratio_plot

        radius = low_radius.get("amplitude") if isinstance(low_radius, Mapping) else low_radius
        for q in ("amplitude", "phase"):
            r = low_radius.get(q) if isinstance(low_radius, Mapping) else low_radius
            name = f"analysis_{q}.png"
            damage_plot(summary, q, out_dir / name, radius=r)
            result["plots"][f"{q} damage vs frequency"] = name
        if ratios and summary["ratios"]["freqpure/diffpure"]["bands"]:
            ratio_plot(summary, "freqpure/diffpure", out_dir / "analysis_ratio.png")
            result["plots"][f"FreqPure / DiffPure low-frequency damage ratio (r <= {radius})"] = "analysis_ratio.png"
    write_json_atomic(out_dir / "analysis.json", result, finite=False, default=str)
    return result


# ---------------------------------------------------------------------------------------------
# The whole pipeline
# ---------------------------------------------------------------------------------------------
@dataclass
class AnalyzeSettings:
    """What ``freqpure analyze`` measures. ``eps`` and ``step_size`` accept fractions (``8/255``)."""

    n: int = 256
    seed: int = 0
    data_dir: str | None = None
    classifier: str = "cifar10-resnet-small"
    eps: float | str = 8 / 255
    attack_steps: int = 20
    step_size: float | str = 2 / 255
    random_start: bool = True
    # FreqPure as measured; its DiffPure shares the model, the plan and the sampler (PurifierConfig.for_method).
    # Default: the library defaults (freqpure.presets).
    purifier: PurifierConfig = field(default_factory=PurifierConfig)
    include_clean: bool = False
    max_radius: float | None = None
    ci: str = "bootstrap"
    n_boot: int = 2000
    amp_floor: float = 1e-3
    plots: bool = True
    batch_size: int = 64

    # the purifier keys of older configs, once flat: read as purifier.<key>
    ALIASES: ClassVar[dict[str, Any]] = {key: nested_alias(f"purifier.{key}") for key in (
        "diffusion", "rounds", "sampler", "amp_radius", "phase_radius", "delta", "mode", "reference")}

    def __post_init__(self) -> None:
        from freqpure.evaluation.config import parse_number

        if self.purifier.method != "freqpure":
            raise UsageError(f"analyze purifier.method must be freqpure (its DiffPure is derived from it), got "
                             f"{self.purifier.method!r}")

        self.eps = parse_number(self.eps, "eps")
        self.step_size = parse_number(self.step_size, "step_size")
        for key in ("n", "batch_size", "attack_steps", "n_boot"):
            if getattr(self, key) < 1:
                raise UsageError(f"analyze {key} must be >= 1, got {getattr(self, key)}")
        if self.ci not in ("bootstrap", "normal"):
            raise UsageError(f"analyze ci must be bootstrap or normal, got {self.ci!r}")
        if not 0 <= self.seed <= 2**63 - 1:  # the seeds purify and evaluate accept
            raise UsageError(f"analyze seed must be in 0..{2**63 - 1}, got {self.seed}")
        if not 0 < self.eps <= 0.5:  # evaluate's L-inf limit: beyond it the image is anything
            raise UsageError(f"analyze eps must be in (0, 0.5] (pixel units of [0, 1] images, e.g. 8/255), "
                             f"got {self.eps:g}")
        if not (self.step_size > 0 and math.isfinite(self.step_size)):
            raise UsageError(f"analyze step_size must be finite and > 0, got {self.step_size:g}")
        if self.max_radius is not None and not (self.max_radius > 0 and math.isfinite(self.max_radius)):
            raise UsageError(f"analyze max_radius must be finite and > 0 (or null: the whole spectrum), "
                             f"got {self.max_radius:g}")
        if not (self.amp_floor >= 0 and math.isfinite(self.amp_floor)):
            raise UsageError(f"analyze amp_floor must be finite and >= 0, got {self.amp_floor:g}")

    def purifier_configs(self) -> dict[str, Any]:
        """DiffPure and FreqPure sharing the model, the plan, the sampler and (at run time) the noise."""
        return {"diffpure": self.purifier.for_method("diffpure"), "freqpure": self.purifier}


def run_analysis(s: AnalyzeSettings, out: str | Path, *, device: torch.device | str = "cpu",
                 progress: bool = False) -> dict[str, Any]:
    """Load the data and models of ``s``, attack, purify, measure, and write everything to ``out``.

    Returns the dict written to ``analysis.json``.
    """
    from freqpure.config import build_purifier, to_dict
    from freqpure.data import eval_subset
    from freqpure.models.registry import load_classifier, load_diffusion
    from freqpure.provenance import environment

    device = torch.device(device)
    out = Path(out)
    t0 = time.perf_counter()
    subset = eval_subset(s.n, s.seed, data_dir=s.data_dir)
    classifier = load_classifier(s.classifier, device=device).eval()
    eps_model = load_diffusion(s.purifier.diffusion, device=device)
    configs = s.purifier_configs()
    purifiers = {name: build_purifier(cfg, eps_model, seed=s.seed, device=device) for name, cfg in configs.items()}
    bands = RadialBands.integer(subset.x.shape[-2], subset.x.shape[-1], s.max_radius)
    attack = pgd_attack(classifier, eps=s.eps, steps=s.attack_steps, step_size=s.step_size,
                        random_start=s.random_start, seed=s.seed)
    setup = time.perf_counter() - t0
    m = measure(subset.x, subset.y, classifier, purifiers, attack, bands=bands, batch_size=s.batch_size,
                seed=s.seed, amp_floor=s.amp_floor, include_clean=s.include_clean, device=device, progress=progress)
    m.timings["setup"] = setup
    settings = {
        "data": {"dataset": "cifar10", "split": "test", "n": s.n, "seed": s.seed,
                 "indices_sha": _digest(subset.indices)},
        "classifier": s.classifier,
        "attack": {"name": "pgd", "norm": "linf", "eps": s.eps, "steps": s.attack_steps,
                   "step_size": s.step_size, "random_start": s.random_start, "target": "undefended classifier",
                   "loss": "ce"},
        "purifiers": {name: to_dict(cfg) for name, cfg in configs.items()},
        "noise": "both purifiers get StepNoise(seed).child(batch_index) for each batch (paired)",
        "noise_scheme": _noise_scheme(),
        "bands": "integer radius bins k-1 < r <= k of the centred spectrum (band 0: DC)",
        "amp_floor": s.amp_floor,
        "batch_size": s.batch_size,
        "all": to_dict(s),
    }
    low = {"amplitude": s.purifier.amp_radius, "phase": s.purifier.phase_radius}
    ci = {"method": s.ci, "n_boot": s.n_boot, "seed": s.seed}
    return write_analysis(out, m, settings=settings, low_radius=low, ci=ci, plots=s.plots,
                          extra={"versions": environment(device)})


def _noise_scheme() -> str:
    from freqpure.samplers import NOISE_SCHEME

    return NOISE_SCHEME


def _digest(indices: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


ANALYSIS_FORMAT = "freqpure-analysis/2"  # 2: settings.all nests the purifier (1: its keys flat)


def analysis_in_current_form(data: dict[str, Any]) -> dict[str, Any]:
    """An ``analysis.json`` dict of either format as format 2: ``settings.all`` with the purifier nested (the flat
    keys of format 1 moved, as :class:`AnalyzeSettings` reads them) and ``mode: reference`` spelled ``official``
    there and in ``settings.purifiers``. Anything else is left as it is; a dict without settings comes back."""
    from freqpure.evaluation.demo_summary import nested_settings

    settings = data.get("settings")
    if not isinstance(settings, dict):
        return data
    settings = dict(settings)
    if isinstance(settings.get("all"), dict):
        settings["all"] = nested_settings(settings["all"], AnalyzeSettings.ALIASES)
    if isinstance(settings.get("purifiers"), dict):
        settings["purifiers"] = {name: nested_settings({"purifier": p})["purifier"] if isinstance(p, dict) else p
                                 for name, p in settings["purifiers"].items()}
    out = {**data, "settings": settings}
    if "format" in data:
        out["format"] = ANALYSIS_FORMAT
    return out
