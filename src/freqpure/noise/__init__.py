"""Every noise stream of freqpure, and how an evaluation addresses them (the one place noise is made).

* :mod:`freqpure.noise.counter`: scheme ``counter-v1``'s generator, Philox-4x32-10 and Box–Muller in torch
  integer ops (one key per row, any device, one call per batch).
* :mod:`freqpure.noise.streams`: the streams, addressed by path and replayable: :class:`StepNoise`
  (``blake2b-philox-v2``, :data:`NOISE_SCHEME`, the default), :class:`CounterNoise` (``counter-v1``),
  :class:`DrawNoise` (a draw-major batch of streams), :func:`make_noise` and the :class:`NoiseSource` protocol
  the samplers, purifiers and attacks take.
* :mod:`freqpure.noise.paths`: the injective path encoding, and the ``counter-v1`` streams of a
  :class:`DrawNoise` held as encoded paths (no Python object per stream on an ``image-v1`` batch's hot path).
* :mod:`freqpure.noise.addressing`: which stream each draw of an evaluation comes from: :class:`Purpose`,
  :class:`Scope`, the addressings ``batch-v1`` (:func:`batch_stream`) and ``image-v1`` (:func:`image_streams`,
  numbers independent of the batch size), the named children (:func:`eot_draws`, :func:`ensemble_streams`,
  :func:`start_generator`, :func:`pool_stream`, AutoAttack's) and the named streams of the runs outside an
  evaluation (the study's clean, vote and passthrough streams, the frequency analysis', the purified data's).
"""

from __future__ import annotations

from freqpure.noise.addressing import (
    BATCH_ADDRESSING,
    IMAGE_ADDRESSING,
    NOISE_ADDRESSINGS,
    PASSTHROUGH_SALT,
    VOTE_STREAM_OFFSET,
    Purpose,
    RowRandom,
    Scope,
    analysis_attack_stream,
    analysis_batch_stream,
    analysis_start_generator,
    autoattack_model_stream,
    autoattack_probe_stream,
    autoattack_seed,
    autoattack_stage_seed,
    batch_stream,
    call_stream,
    check_noise_addressing,
    clean_batch_stream,
    ensemble_streams,
    eot_draws,
    image_streams,
    passthrough_stream,
    pilot_passthrough_generator,
    pool_stream,
    purify_chunk_stream,
    run_stream,
    start_generator,
    vote_batch_stream,
)
from freqpure.noise.counter import COUNTER_SCHEME, counter_normals, counter_uniforms, identity_words, philox4x32
from freqpure.noise.streams import (
    NOISE_SCHEME,
    NOISE_SCHEMES,
    CounterNoise,
    DrawNoise,
    NoiseSource,
    StepNoise,
    _encode,  # noqa: F401 - the injective path encoding, for its tests
    check_noise_scheme,
    derive_key,
    make_noise,
    noise_scheme_of,
    path_rng,
)

__all__ = [
    "NOISE_SCHEME", "COUNTER_SCHEME", "NOISE_SCHEMES", "StepNoise", "CounterNoise", "DrawNoise", "NoiseSource",
    "make_noise", "noise_scheme_of", "check_noise_scheme", "derive_key", "path_rng",
    "philox4x32", "counter_normals", "counter_uniforms", "identity_words",
    "Purpose", "Scope", "BATCH_ADDRESSING", "IMAGE_ADDRESSING", "NOISE_ADDRESSINGS", "check_noise_addressing",
    "batch_stream", "image_streams", "run_stream", "RowRandom", "start_generator", "eot_draws", "call_stream",
    "ensemble_streams", "pool_stream", "autoattack_model_stream", "autoattack_probe_stream", "autoattack_seed",
    "autoattack_stage_seed", "clean_batch_stream", "vote_batch_stream", "VOTE_STREAM_OFFSET",
    "PASSTHROUGH_SALT", "passthrough_stream", "pilot_passthrough_generator", "analysis_batch_stream",
    "analysis_attack_stream", "analysis_start_generator", "purify_chunk_stream",
]
