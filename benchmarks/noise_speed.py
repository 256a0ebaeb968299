"""One reverse step's noise draw for a row-addressed batch, before and after #25, in one run.

``PurifiedClassifier`` gives every image × ensemble draw its own stream, so a step of a ``[R, 3, 32, 32]``
batch draws ``R`` streams. Timed (best of ``--repeats``, interleaved):

* ``blake2b-philox-v2, unmodified``: the code of c71875b, written out here: per stream a fresh numpy
  ``Generator(Philox(key))``, ``standard_normal``, ``torch.from_numpy`` and a copy, then ``torch.cat``;
* ``blake2b-philox-v2, now``: :class:`~freqpure.samplers.DrawNoise` today (one host buffer, a re-keyed
  generator, one copy; the same numbers to the bit, checked here);
* ``counter-v1``: the counter scheme, made on ``--device`` in one batched call.

Then the Python around the draws of one attack-gradient call under ``image-v1`` (#25, "image-v1 stream
overhead"): the EOT draws of ``--images`` per-image ``counter-v1`` streams × ``--eot`` draws and ``--rounds``
rounds of ``child(r)`` with their identity words, without (``eot·rounds``) and with the rows a
``PurifiedClassifier`` derives (``ensemble_streams``, a chunk, its rounds), against one draw of the whole
``[images·eot, 3, 32, 32]`` batch. ``per object`` is a941fc3's DrawNoise written out (a ``CounterNoise`` per
stream at every ``child``, a BLAKE2b identity per object); ``paths`` is DrawNoise today (the same identity
words, checked here).

    python benchmarks/noise_speed.py --rows 128,320 --threads 1
    python benchmarks/noise_speed.py --rows "" --images 256 --eot 20 --rounds 10 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from freqpure.noise import CounterNoise, DrawNoise, Purpose, ensemble_streams, eot_draws, identity_words, image_streams
from freqpure.runtime import configure_threads
from freqpure.samplers import StepNoise


def unmodified_draw(streams: list[StepNoise], key: int, like: torch.Tensor) -> torch.Tensor:
    """c71875b's ``DrawNoise.__call__`` with one-row streams: a generator per stream, then one ``cat``."""
    part = like[:1]
    outs = []
    for s in streams:
        rng = np.random.Generator(np.random.Philox(key=s.key(key)))
        z = torch.from_numpy(rng.standard_normal(tuple(part.shape), dtype=np.float32))
        outs.append(z.to(device=like.device, dtype=like.dtype))
    return torch.cat(outs)


class PerObjectDraws:
    """a941fc3's ``DrawNoise`` for ``counter-v1`` streams, written out: ``child`` makes a ``CounterNoise`` per
    stream, the identity words hash each object's path."""

    def __init__(self, streams: list) -> None:
        self.streams = list(streams)
        inner = {len(s.leaves) if isinstance(s, PerObjectDraws) else -1 for s in self.streams}
        nested = len(inner) == 1 and inner != {-1}
        self.leaves = [leaf for s in self.streams for leaf in s.leaves] if nested else self.streams

    def child(self, salt: int) -> PerObjectDraws:
        return PerObjectDraws([s.child(salt) for s in self.streams])

    def rows(self, n: int) -> list:
        k = len(self.streams)
        return [row for s in self.streams for row in s.rows(n // k)]

    def _identity_words(self, device: torch.device) -> torch.Tensor:
        return identity_words([s.identity for s in self.leaves], device)


def per_object_call(root: PerObjectDraws, eot: int, rounds: int, rows: bool, device: torch.device) -> torch.Tensor:
    """The stream work of one EOT gradient call, a941fc3's way: its draws (``eot_draws``), with ``rows`` a
    PurifiedClassifier's rows and chunk (``ensemble_streams`` of ensemble 1), then every round's ``child`` and
    identity words. The last round's words."""
    draws = PerObjectDraws([root.child(3).child(k) for k in range(eot)])
    if rows:
        draws = PerObjectDraws([s.child(0) for s in draws.rows(len(draws.leaves))])
    for r in range(rounds):
        words = draws.child(r)._identity_words(device)
    return words


def paths_call(root: DrawNoise, eot: int, rounds: int, rows: bool, device: torch.device) -> torch.Tensor:
    """:func:`per_object_call` through the library today."""
    draws = eot_draws(root, 3, eot)
    if rows:
        n = len(root) * eot
        draws = DrawNoise(ensemble_streams(draws, n, 1)[:n])
    for r in range(rounds):
        words = draws.child(r)._identity_words(device)
    return words


def overhead_table(images: int, eot: int, rounds: int, repeats: int, device: torch.device) -> None:
    root = image_streams(7, range(images), Purpose.ATTACK)
    old_root = PerObjectDraws(root.leaves)
    like = torch.empty(images * eot, 3, 32, 32, device=device)
    one = eot_draws(root, 3, eot).child(0)
    t_draw = best(lambda: one(5, like), repeats, device)  # the draw alone (identity words made once, cached)
    print(f"\nstreams of one gradient call: {images} images x {eot} EOT draws, {rounds} rounds; one draw of "
          f"[{images * eot}, 3, 32, 32] takes {t_draw:.3f} s")
    print("| work per gradient call | per object, a941fc3 (s) | paths, now (s) | speed-up | vs one draw, "
          "before -> now |")
    print("|---|---|---|---|---|")
    for rows in (False, True):
        old = per_object_call(old_root, eot, rounds, rows, device)
        assert torch.equal(old.cpu(), paths_call(root, eot, rounds, rows, device).cpu())  # the same identities
        t_old, t_new = [], []
        for _ in range(repeats):  # interleaved
            t_old.append(best(lambda w=rows: per_object_call(old_root, eot, rounds, w, device), 1, device))
            t_new.append(best(lambda w=rows: paths_call(root, eot, rounds, w, device), 1, device))
        label = f"EOT draws + {rounds} x (child + identity words)" + (", with the rows and chunk" if rows else "")
        print(f"| {label} | {min(t_old):.3f} | {min(t_new):.3f} | {min(t_old) / min(t_new):.1f}x | "
              f"{min(t_old) / t_draw:.0%} -> {min(t_new) / t_draw:.0%} |")


def best(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="128,320")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--eot", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device}, threads {threads}, torch {torch.__version__}, load {load:.2f}")
    print("| rows | blake2b-philox-v2, unmodified (ms) | blake2b-philox-v2, now (ms) | speed-up | counter-v1 (ms) |")
    print("|---|---|---|---|---|")
    for rows in (int(r) for r in args.rows.split(",") if r):
        like = torch.empty(rows, 3, 32, 32, device=device)
        old_streams = StepNoise(7).rows(rows)
        old = DrawNoise(old_streams)
        new = DrawNoise(CounterNoise(7).rows(rows))
        assert torch.equal(old(3, like).cpu(), unmodified_draw(old_streams, 3, like).cpu())  # same numbers
        t_unmod = best(lambda s=old_streams, x=like: unmodified_draw(s, 3, x), args.repeats, device)
        t_now = best(lambda d=old, x=like: d(3, x), args.repeats, device)
        t_counter = best(lambda d=new, x=like: d(3, x), args.repeats, device)
        print(f"| {rows} | {t_unmod * 1e3:.1f} | {t_now * 1e3:.1f} | {t_unmod / t_now:.2f}x | {t_counter * 1e3:.1f} |")
    if args.images and args.eot and args.rounds:
        overhead_table(args.images, args.eot, args.rounds, args.repeats, device)


if __name__ == "__main__":
    main()
