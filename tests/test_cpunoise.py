"""``CpuNoise`` of the GPU tests (CPU draws moved to the device): its child streams keep their path, so they
differ from each other and from the root and equal :class:`StepNoise`'s children. Runs without CUDA."""

from __future__ import annotations

import torch

from freqpure import StepNoise
from test_gpu import CpuNoise


def test_cpu_noise_children_keep_their_path():
    like = torch.zeros(2, 3, 4, 4)
    root = CpuNoise(3)
    streams = [root, root.child(0), root.child(1), root.child(0).child(7), root.child(1).child(7)]
    draws = [s(5, like) for s in streams]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert not torch.equal(draws[i], draws[j]), (streams[i], streams[j])
    reference = [StepNoise(3), StepNoise(3).child(0), StepNoise(3).child(1), StepNoise(3).child(0).child(7),
                 StepNoise(3).child(1).child(7)]
    for stream, ref, draw in zip(streams, reference, draws):
        assert isinstance(stream, CpuNoise) and stream == ref
        torch.testing.assert_close(draw, ref(5, like), rtol=0, atol=0)
    for row, ref in zip(root.rows(3), StepNoise(3).rows(3)):
        assert isinstance(row, CpuNoise)
        torch.testing.assert_close(row(0, like), ref(0, like), rtol=0, atol=0)
