"""A run started by the training code of commit dc7605b resumes under the current code on the same trajectory.

The fixture (tests/fixtures/train_resume_dc7605b, made by its make_fixture.py with that commit's code)
holds a tiny diffusion run with the cifar10-ddpm-pure settings stopped after 3 of 6 steps: checkpoint.pt
(keys model/ema/optimizer/step/rng/config/time), config.json and metrics.jsonl, plus the losses and final
RNG states of the same run done without interruption by the old code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from freqpure.config import from_dict
from freqpure.training import CHECKPOINT, DiffusionTrainConfig, load_checkpoint, train_diffusion
from helpers import same_machine

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "train_resume_dc7605b"


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


# A loss here is a mean of about 10^5 squared errors accumulated from bf16 matmuls. Another CPU's kernels
# (other vector width, other blocking) sum in another order: the loss moves by a few float32 ulps times
# the accumulation depth, measured at 2.4e-7 relative on an AMD EPYC against the fixture's machine. A
# changed trajectory (other data order, other noise draw, other weights) moves it by 1e-2 (the spread of
# the six recorded losses), so 1e-5 relative separates the two by three orders of magnitude either way.
LOSS_RTOL = 1e-5


@pytest.mark.slow  # decodes the 50,000-image train split: its data order is part of what is checked
def test_old_checkpoint_resumes_with_identical_losses(cifar_test_tar: Path, tmp_path: Path) -> None:
    expected = json.loads((FIXTURE / "expected.json").read_text())
    run = tmp_path / "run"
    shutil.copytree(FIXTURE / "run", run)
    old = load_checkpoint(run / CHECKPOINT)
    assert list(old) == ["model", "ema", "optimizer", "step", "rng", "config", "time"] and old["step"] == 3
    # the old config.json loads strictly into today's config class (field names unchanged)
    cfg = from_dict(DiffusionTrainConfig, {**json.loads((run / "config.json").read_text()),
                                           "data_dir": str(cifar_test_tar.parent)})
    snap = train_diffusion(cfg, run, progress=False)
    assert snap["step"] == 6 and list(snap) == list(old)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [[r["step"], r["loss"]] for r in rows if "loss" in r]
    # the data order and every random draw are the old ones: the generator states match exactly
    assert _sha(snap["rng"]["gen"]) == expected["final_gen_state_sha256"]
    assert _sha(snap["rng"]["torch"]) == expected["final_torch_state_sha256"]
    # Bitwise equality is claimed only where it holds: the same CPU model and the same torch build. The
    # capability string alone ("AVX512") is shared by CPUs whose kernels round differently.
    if same_machine(expected):
        assert losses == expected["losses"]  # bitwise, on the machine kind the fixture was made on
        ema = b"".join(v.float().numpy().tobytes() for v in snap["ema"].values())
        assert hashlib.sha256(ema).hexdigest() == expected["ema_sha256"]
    else:  # other CPU kernels round bf16 matmuls differently; a changed trajectory would differ by far more
        assert [s for s, _ in losses] == [s for s, _ in expected["losses"]]
        assert [v for _, v in losses] == pytest.approx([v for _, v in expected["losses"]], rel=LOSS_RTOL, abs=0)
    # the finished run exports its EMA weights with the trained range in the metadata
    from freqpure.models.bundled import read_metadata

    assert read_metadata(run / "export" / "tiny-ddpm-pure.safetensors")["freqpure_t_max"] == "200"
