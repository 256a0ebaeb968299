"""Cost of one attack gradient through the purifier: full mode (per-step checkpointing) vs plain backprop.

For 10, 50 and 100 sampler steps (FreqPure, t* = 100, paper mode, r = 10, on the bundled CPU UNet and
classifier) this measures, for one batch:

* ``forward``: one purified-classifier forward pass without a graph;
* ``step graph``: one differentiable forward of a single sampler step + the classifier, graph kept
  (the unit that checkpointing recomputes: the "one forward pass" full mode is compared to);
* ``plain``: forward + backward with ordinary autograd (every step's activations stored);
* ``full``: the same gradient with per-step gradient checkpointing (freqpure's ``full`` mode);

and the EOT batching gain: K draws batched into one purifier call vs a loop over the draws.

Memory. ``tracemalloc`` does not see torch's CPU tensors (c10's allocator is not Python's), and the
process RSS is blurred by glibc keeping freed blocks. So the peak is read from torch's own allocator
events: the call runs once under ``torch.profiler.profile(profile_memory=True)``, every CPU
allocation/free event (size, time) is collected from the profiler's event tree, and the peak of
their running sum is the extra tensor memory the call needed at its worst moment. (This is the
number ``prof.export_memory_timeline`` plots, without its minutes-long categorisation pass.) On CUDA
``torch.cuda.max_memory_allocated`` is used instead. Times come from a separate run without the
profiler.

Run: ``python benchmarks/attack_cost.py [--batch 4] [--threads 1] [--eot 4]`` (a few minutes on one
busy CPU core). Results are recorded in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

STEPS = (10, 50, 100)


def build(device: str, steps: int, batch: int, checkpoint: bool):
    """(attack model, x, y, description) for FreqPure with ``steps`` sampler steps."""
    from freqpure import FreqPure
    from freqpure.attacks import AttackModel

    try:
        import freqpure

        eps_model = freqpure.load_diffusion("cifar10-ddpm-small", device=device)
        classifier = freqpure.load_classifier("cifar10-resnet-small", device=device)
        source = "bundled cifar10-ddpm-small + cifar10-resnet-small"
    except (FileNotFoundError, ValueError):  # the architecture is what costs; weights change neither
        from freqpure.models.adapters import EpsModel
        from freqpure.models.small import FastResNet, SmallUNet

        torch.manual_seed(0)
        eps_model = EpsModel(SmallUNet(base=32, mults=(1, 2, 2, 2), num_res_blocks=2, attn_levels=(2,), dropout=0.0),
                             image_size=32).to(device)
        classifier = FastResNet().to(device)
        source = "bundled architectures, random weights (bundled weights not found)"
    for m in (eps_model, classifier):
        m.eval().requires_grad_(False)
    purifier = FreqPure(eps_model, 10, 10, 0.3, rounds=f"100:{steps}", checkpoint=checkpoint)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    return AttackModel(classifier, purifier), x, y, source


def peak_bytes(fn: Callable[[], object], device: str) -> int:
    """Peak extra tensor memory (bytes) allocated while ``fn`` runs (see module docstring)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        if e.tag == _EventType.Allocation and e.extra_fields.device.type == "cpu":
            events.append((e.start_time_ns, e.extra_fields.alloc_size))
        stack.extend(e.children)
    running = peak = 0
    for _, size in sorted(events):
        running += size
        peak = max(peak, running)
    return peak


def seconds(fn: Callable[[], object], device: str, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def task(kind: str, model, x, y, eot: int) -> Callable[[], object]:
    from freqpure.attacks import EOTGradient
    from freqpure.samplers import StepNoise

    def forward():
        with torch.no_grad():
            return model(x, StepNoise(1))

    def gradient():
        xr = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xr, StepNoise(1)), y)
        (g,) = torch.autograd.grad(loss, xr)
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        return g

    def step_graph():
        xr = x.clone().requires_grad_(True)
        out = model(xr, StepNoise(1))  # the graph is alive until the call returns: its peak is measured
        return out.sum().item()

    def eot_batched():
        return EOTGradient(model, eot=eot, seed=1)(x, y)

    def eot_loop():
        return EOTGradient(model, eot=eot, seed=1, max_batch=x.shape[0])(x, y)

    return {"forward": forward, "plain": gradient, "full": gradient, "step_graph": step_graph,
            "eot_batched": eot_batched, "eot_loop": eot_loop}[kind]


def measure(kind: str, steps: int, args: argparse.Namespace) -> dict:
    model, x, y, source = build(args.device, steps, args.batch, checkpoint=kind not in ("plain", "step_graph"))
    fn = task(kind, model, x, y, args.eot)
    mib = peak_bytes(fn, args.device) / 2**20
    sec = seconds(fn, args.device, repeats=2 if kind.startswith("eot") else 1)
    return {"kind": kind, "steps": steps, "mib": mib, "seconds": sec, "source": source}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=4, help="images per batch (default 4)")
    p.add_argument("--eot", type=int, default=4, help="EOT draws for the batching comparison (default 4)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    one = measure("step_graph", 1, args)
    rows = {(k, s): measure(k, s, args) for s in STEPS for k in ("forward", "plain", "full")}
    eot = {k: measure(k, 10, args) for k in ("eot_batched", "eot_loop")}

    print(f"attack gradient cost: FreqPure t*=100 (r=10), batch {args.batch}, {args.device}, "
          f"{args.threads} thread(s), torch {torch.__version__}; models: {one['source']}")
    print(f"one differentiable forward (1 sampler step + classifier, graph kept): {one['mib']:.1f} MiB")
    print(f"{'steps':>5} | {'no-grad fwd MiB':>15} | {'plain MiB':>9} | {'full MiB':>8} | {'full/1-step fwd':>15} | "
          f"{'plain/full mem':>14} | {'plain s':>7} | {'full s':>6} | {'full/plain time':>15}")
    for s in STEPS:
        f, pl, fu = rows["forward", s], rows["plain", s], rows["full", s]
        print(f"{s:>5} | {f['mib']:>15.1f} | {pl['mib']:>9.1f} | {fu['mib']:>8.1f} | {fu['mib'] / one['mib']:>15.2f} | "
              f"{pl['mib'] / fu['mib']:>14.1f} | {pl['seconds']:>7.2f} | {fu['seconds']:>6.2f} | "
              f"{fu['seconds'] / pl['seconds']:>15.2f}")
    lo, hi = rows["full", STEPS[0]]["mib"], rows["full", STEPS[-1]]["mib"]
    plo, phi = rows["plain", STEPS[0]]["mib"], rows["plain", STEPS[-1]]["mib"]
    span = STEPS[-1] - STEPS[0]
    print(f"memory from {STEPS[0]} to {STEPS[-1]} steps: full x{hi / lo:.2f} (+{(hi - lo) / span:.3f} MiB/step), "
          f"plain x{phi / plo:.2f} (+{(phi - plo) / span:.1f} MiB/step)")
    b, lp = eot["eot_batched"], eot["eot_loop"]
    print(f"EOT {args.eot} draws x {args.batch} images, 10 steps, full mode: one batched call {b['seconds']:.2f} s "
          f"({b['mib']:.0f} MiB), loop over draws {lp['seconds']:.2f} s ({lp['mib']:.0f} MiB): "
          f"batched is x{lp['seconds'] / b['seconds']:.2f} as fast")


if __name__ == "__main__":
    main()
