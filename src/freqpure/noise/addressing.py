"""Which stream each draw of an evaluation comes from: the named addressings, purposes and derived streams.

An evaluation's streams are rooted at ``(seed, scope, ...)`` and named by a :class:`Purpose` (the clean
judgement, an attack's EOT draws, its random starts, ...). Two addressings, recorded in a run's config as
``noise_addressing`` (:data:`NOISE_ADDRESSINGS`):

* ``batch-v1`` (:data:`BATCH_ADDRESSING`, the default; every recorded run): one stream per batch,
  :func:`batch_stream`, path ``(seed, Scope.BATCH, batch, purpose, index)``; the rows of a batch are drawn
  from it together, so the numbers depend on the batch size.
* ``image-v1`` (:data:`IMAGE_ADDRESSING`): one stream per image, :func:`image_streams`, path ``(seed,
  Scope.IMAGE, image, purpose, index)`` with ``image`` the image's index in its data set; a batch's root is
  the :class:`~freqpure.noise.DrawNoise` of its images' streams, so every row draws from its own image's
  stream and the numbers do not depend on the batch size (nor on the image's position in the subset). It
  draws with scheme ``counter-v1`` only (one Philox key per row, all rows in one call; ``blake2b-philox-v2``
  would hash and fill every row separately at every step).

Below a root, consumers derive children with the named functions here (:func:`eot_draws`,
:func:`call_stream`, :func:`ensemble_streams`, :func:`start_generator`, :func:`pool_stream` and AutoAttack's
:func:`autoattack_model_stream`, :func:`autoattack_probe_stream`, :func:`autoattack_seed`,
:func:`autoattack_stage_seed`), so that a path means the same under either addressing.

The runs outside an evaluation draw from named streams too, each at the path it has always had (recorded
numbers): the study's clean runs (:func:`clean_batch_stream`, :func:`vote_batch_stream`), their passthrough
perturbations (:func:`passthrough_stream`, the pilot's :func:`pilot_passthrough_generator`), the frequency
analysis (:func:`analysis_batch_stream`, :func:`analysis_attack_stream`, :func:`analysis_start_generator`) and
the purified copies of a data set (:func:`purify_chunk_stream`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import IntEnum

import numpy as np
import torch
from torch import Tensor

from freqpure.errors import UsageError
from freqpure.noise.counter import COUNTER_SCHEME, counter_uniforms
from freqpure.noise.counter import counter_normals as _normals
from freqpure.noise.paths import CounterRows
from freqpure.noise.streams import CounterNoise, DrawNoise, NoiseSource, StepNoise, make_noise

__all__ = ["Purpose", "Scope", "BATCH_ADDRESSING", "IMAGE_ADDRESSING", "NOISE_ADDRESSINGS", "check_noise_addressing",
           "batch_stream", "image_streams", "run_stream", "RowRandom", "start_generator", "eot_draws", "call_stream",
           "ensemble_streams", "pool_stream", "autoattack_model_stream", "autoattack_probe_stream", "autoattack_seed",
           "autoattack_stage_seed", "clean_batch_stream", "vote_batch_stream", "VOTE_STREAM_OFFSET",
           "PASSTHROUGH_SALT", "passthrough_stream", "pilot_passthrough_generator", "analysis_batch_stream",
           "analysis_attack_stream", "analysis_start_generator", "purify_chunk_stream"]

BATCH_ADDRESSING = "batch-v1"
IMAGE_ADDRESSING = "image-v1"
NOISE_ADDRESSINGS = (BATCH_ADDRESSING, IMAGE_ADDRESSING)


class Purpose(IntEnum):
    """What an evaluation stream is for: ``batch_stream(seed, b, Purpose.X, index)``."""

    CLEAN = 1  # the defence's judgement of the clean images
    EXAMPLE = 2  # the purification shown in examples.npz
    ATTACK = 3  # index = attack: its EOT draws / the attacked model's noise
    START = 4  # index = attack: its random starts (and AutoAttack's seed)
    JUDGE = 5  # index = attack: the defence's judgement of its final images
    UNDEFENDED = 6  # index = sanity check: random start of PGD on the bare classifier
    POOL = 7  # index = attack: the defence's verdicts between AutoAttack's attacks (child = stage)


class Scope(IntEnum):
    """The second element of an evaluation stream's path: which addressing and which part of the run."""

    BATCH = 0  # batch-v1: the run's batches
    SWEEP = 1  # batch-v1: the eps sweep's batches (per multiplier)
    IMAGE = 2  # image-v1: the run's images
    IMAGE_SWEEP = 3  # image-v1: the eps sweep's images (per multiplier)


def check_noise_addressing(addressing: object, scheme: str | None) -> str:
    """``addressing`` (``None``: :data:`BATCH_ADDRESSING`) if valid with noise scheme ``scheme``; a
    :class:`UsageError` otherwise (``image-v1`` draws with ``counter-v1`` only)."""
    addressing = BATCH_ADDRESSING if addressing is None else addressing
    if addressing not in NOISE_ADDRESSINGS:
        raise UsageError(f"noise_addressing must be one of {', '.join(NOISE_ADDRESSINGS)}, got {addressing!r}")
    if addressing == IMAGE_ADDRESSING and scheme != COUNTER_SCHEME:
        raise UsageError(f"noise_addressing {IMAGE_ADDRESSING} draws one stream per image with noise scheme "
                         f"{COUNTER_SCHEME} (all rows in one call); set noise_scheme: {COUNTER_SCHEME}")
    return str(addressing)


def batch_stream(seed: int, batch: int, purpose: Purpose, index: int = 0, *, sweep: int | None = None,
                 scheme: str | None = None) -> StepNoise:
    """The ``batch-v1`` stream of ``(seed, batch, purpose, index)`` — never of the process rank.

    Its path is ``(seed, Scope.BATCH, batch, purpose, index)``, or ``(seed, Scope.SWEEP, sweep, batch,
    purpose, index)`` for batch ``batch`` of the eps sweep's multiplier number ``sweep``; below it the
    attacks and the defence derive children (EOT call and draw, image, ensemble draw, round). Paths are
    hashed injectively, so different paths never share draws.
    """
    scope = (Scope.BATCH, batch) if sweep is None else (Scope.SWEEP, sweep, batch)
    return make_noise(seed, (*scope, int(purpose), int(index)), scheme)  # scheme None: NOISE_SCHEME


def image_streams(seed: int, images: Sequence[int], purpose: Purpose, index: int = 0, *,
                  sweep: int | None = None) -> DrawNoise:
    """The ``image-v1`` root of a batch of ``images`` (data-set indices): a :class:`DrawNoise` whose row ``r``
    is image ``images[r]``'s stream ``(seed, Scope.IMAGE, image, purpose, index)`` (``(seed, Scope.IMAGE_SWEEP,
    sweep, image, purpose, index)`` in the eps sweep), scheme ``counter-v1``."""
    if not len(images):
        raise UsageError("image_streams needs at least one image")
    scope = (Scope.IMAGE,) if sweep is None else (Scope.IMAGE_SWEEP, int(sweep))
    root = make_noise(seed, scope, COUNTER_SCHEME)
    return DrawNoise([root.child(int(i)).child(int(purpose)).child(int(index)) for i in images])


def run_stream(addressing: str | None, seed: int, batch: int, images: Sequence[int], purpose: Purpose,
               index: int = 0, *, sweep: int | None = None, scheme: str | None = None) -> NoiseSource:
    """The root of one batch's draws for ``purpose`` under ``addressing`` (``None``: ``batch-v1``):
    :func:`batch_stream` of ``batch``, or :func:`image_streams` of ``images``."""
    if addressing == IMAGE_ADDRESSING:
        return image_streams(seed, images, purpose, index, sweep=sweep)
    return batch_stream(seed, batch, purpose, index, sweep=sweep, scheme=scheme)


class RowRandom:
    """Uniform and normal numbers for a batch whose row ``r`` comes from its own ``counter-v1`` stream
    (``streams.leaves[r]``): the random starts of an ``image-v1`` run, where a numpy generator for the whole
    batch would make row ``r`` depend on the batch. The ``j``-th call (of either kind) draws key ``j`` of
    every row's stream (:func:`~freqpure.noise.counter.counter_uniforms` or ``counter_normals``), so a
    row's numbers depend on its stream and the call sequence only. Made on ``like``'s device, in its dtype.
    """

    def __init__(self, streams: DrawNoise) -> None:
        fast = streams._fast  # counter-v1 paths (no stream objects), or None
        if fast is None and not all(getattr(s, "scheme", None) == COUNTER_SCHEME for s in streams.leaves):
            raise UsageError(f"RowRandom needs {COUNTER_SCHEME} streams (one per row)")
        self.streams, self.calls = streams, 0
        self.rows = len(fast.prefixes) if fast is not None else len(streams.leaves)

    def _draw(self, fill, shape: Sequence[int], like: Tensor) -> Tensor:
        shape = tuple(int(d) for d in shape)
        if not shape or shape[0] != self.rows:
            raise UsageError(f"RowRandom draws {self.rows} rows, asked for shape {shape}")
        words = self.streams._identity_words(like.device)  # the rows' identities, hashed once
        out = fill(words, self.calls, math.prod(shape[1:]))
        self.calls += 1
        return out.reshape(shape).to(like.dtype)

    def random(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """Uniforms in (0, 1) of ``shape`` (``shape[0]``: the rows)."""
        return self._draw(counter_uniforms, shape, like)

    def standard_normal(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """Standard normals of ``shape`` (``shape[0]``: the rows)."""
        return self._draw(_normals, shape, like)


def start_generator(start: NoiseSource) -> np.random.Generator | RowRandom:
    """The random-start generator of an attack's ``start`` root: ``start.rng()`` for one stream (``batch-v1``,
    unchanged numbers), a :class:`RowRandom` over the rows of an ``image-v1`` :class:`DrawNoise`."""
    if isinstance(start, DrawNoise):
        return RowRandom(start)
    return start.rng()


def call_stream(root: NoiseSource, call: int) -> NoiseSource:
    """The noise of model call number ``call`` of an attack whose noise root is ``root``: ``root.child(call)``."""
    return root.child(int(call))


def eot_draws(root: NoiseSource, call: int, eot: int) -> DrawNoise:
    """The ``eot`` draws of EOT call number ``call``: draw ``k`` is ``root.child(call).child(k)``."""
    base = call_stream(root, call)
    return DrawNoise([base.child(k) for k in range(eot)])


def ensemble_streams(noise: NoiseSource, n: int, ensemble: int) -> Sequence:
    """The streams of an ensemble of ``ensemble`` purifications of ``n`` images (draw-major): row ``e·n + b``
    is ``noise.rows(n)[b].child(e)``, so a row's noise depends on its image and draw, not on any chunking.
    A list; for ``counter-v1`` streams in a :class:`DrawNoise` (``image-v1``), a :class:`CounterRows` of their
    paths (one object per row only when a row is read; a slice of it makes a :class:`DrawNoise` of none)."""
    fast = getattr(noise, "_fast", None) if isinstance(noise, DrawNoise) else None
    if fast is not None:
        return CounterRows(fast.ensemble(n, ensemble), CounterNoise._of_prefix)
    per_image = noise.rows(n)
    return [s.child(e) for e in range(ensemble) for s in per_image]


def pool_stream(pool: NoiseSource, stage: int) -> NoiseSource:
    """The defence's verdicts on AutoAttack's pool after attack number ``stage``: ``pool.child(stage)`` (``pool``:
    the batch's :attr:`Purpose.POOL` root)."""
    return pool.child(int(stage))


def autoattack_model_stream(noise: NoiseSource) -> NoiseSource:
    """The root of AutoAttack's model calls (call ``i``: :func:`call_stream` ``i`` of it): ``noise.child(0)``
    (``noise``: the attack's :attr:`Purpose.ATTACK` root)."""
    return noise.child(0)


def autoattack_probe_stream(noise: NoiseSource) -> NoiseSource:
    """The root of AutoAttack's first-gradient probe (the sanity check's gradient norm): ``noise.child(1)``
    (``noise``: the attack's :attr:`Purpose.ATTACK` root)."""
    return noise.child(1)


def autoattack_seed(start: NoiseSource) -> int:
    """AutoAttack's own (31-bit) seed: ``start.int_seed(31)`` of the attack's :attr:`Purpose.START` root."""
    return start.int_seed(31)


def autoattack_stage_seed(seed: int, stage: int) -> int:
    """The seed of torch's global generator while AutoAttack runs attack number ``stage`` (APGD draws its random
    start from it): ``seed + stage``, ``seed`` AutoAttack's own (:func:`autoattack_seed`)."""
    return int(seed) + int(stage)


# The study's clean runs (blake2b-philox-v2, recorded): batch b of the clean subset draws from path (seed, b),
# the vote from (seed, VOTE_STREAM_OFFSET + b). The offset is recorded history, not a separation: clean batch
# 10_000 + b would share vote batch b's stream, so vote batches are kept below the offset (and clean subsets
# stay far below 10_000 batches); a new kind of run should take a Scope of its own.
VOTE_STREAM_OFFSET = 10_000


def clean_batch_stream(seed: int, batch: int) -> StepNoise:
    """The purification noise of clean batch ``batch``: path ``(seed, batch)``."""
    return StepNoise(seed).child(int(batch))


def vote_batch_stream(seed: int, batch: int) -> StepNoise:
    """The ensemble noise of vote batch ``batch``: path ``(seed, VOTE_STREAM_OFFSET + batch)``."""
    if not 0 <= batch < VOTE_STREAM_OFFSET:
        raise UsageError(f"vote batch {batch} is outside [0, {VOTE_STREAM_OFFSET}): its stream would collide with "
                         "a clean batch's")
    return StepNoise(seed).child(VOTE_STREAM_OFFSET + int(batch))


# The passthrough perturbation, scheme per-image-v2 (recorded): image i's band k draws from path
# (seed, PASSTHROUGH_SALT, i) at step k.
PASSTHROUGH_SALT = 7_000_000


def passthrough_stream(seed: int, image: int) -> StepNoise:
    """The passthrough perturbations of test image ``image`` (band ``k``: step ``k``): path
    ``(seed, PASSTHROUGH_SALT, image)``."""
    return StepNoise(seed).child(PASSTHROUGH_SALT).child(int(image))


def pilot_passthrough_generator(seed: int) -> torch.Generator:
    """The pilot's passthrough perturbations (``batch-shared-v1``, kept to read and resume it): a CPU
    ``torch.Generator`` seeded with the root ``seed``, the same for every batch."""
    return torch.Generator().manual_seed(int(seed))


def analysis_batch_stream(seed: int, batch: int) -> StepNoise:
    """The purification noise of the frequency analysis' batch ``batch``, the same for every purifier (paired):
    path ``(seed, batch)``."""
    return StepNoise(seed).child(int(batch))


def analysis_attack_stream(seed: int, batch: int) -> StepNoise:
    """The noise root of the frequency analysis' PGD on batch ``batch`` (the bare classifier draws none): the
    root of seed ``seed + batch``, ``StepNoise(seed + batch)`` (path ``()``)."""
    return StepNoise(int(seed) + int(batch))


def analysis_start_generator(seed: int, batch: int) -> torch.Generator:
    """The random start of the frequency analysis' PGD on batch ``batch``: a CPU ``torch.Generator`` seeded
    with ``seed + batch``."""
    return torch.Generator().manual_seed(int(seed) + int(batch))


def purify_chunk_stream(seed: int, chunk: int) -> StepNoise:
    """The purification noise of chunk ``chunk`` of a purified copy of a data set: path ``(seed, chunk)``."""
    return StepNoise(seed).child(int(chunk))
