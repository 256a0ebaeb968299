"""``freqpure models``: a table with kind, parameters, size and offline availability."""

from __future__ import annotations

from freqpure.cli.main import main


def test_models_table(tmp_path, monkeypatch, capsys) -> None:
    import freqpure
    from freqpure.cli.models import model_rows

    monkeypatch.setenv("FREQPURE_CHECKPOINTS", str(tmp_path))
    (tmp_path / "Standard.pt").write_bytes(b"x" * 1234)  # only its presence is checked by the table
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "kind", "params", "size", "steps", "offline", "where"]
    rows = {r["name"]: r for r in model_rows()}
    clf = freqpure.load_classifier("cifar10-resnet-small")
    assert rows["cifar10-resnet-small"]["params"] == sum(p.numel() for p in clf.parameters())
    assert rows["cifar10-resnet-small"]["available"] and rows["cifar10-ddpm-small"]["kind"] == "diffusion"
    standard = rows["robustbench-cifar10-standard"]
    assert standard["available"] and standard["size"] == 1234 and standard["where"] == str(tmp_path / "Standard.pt")
    assert 36e6 < standard["params"] < 37e6
    missing = rows["diffpure-cifar10-ncsnpp"]
    assert not missing["available"] and missing["size_estimated"] and missing["size"] == 4 * missing["params"]
    line = next(x for x in lines if x.startswith("diffpure-cifar10-ncsnpp "))
    assert " no " in line and "needs checkpoint_8.pth from github.com/yang-song/score_sde_pytorch" in line
    assert next(x for x in lines if x.startswith("cifar10-resnet-small ")).split()[2:6] == ["1.98M", "3.96MB", "-",
                                                                                           "yes"]
    assert next(x for x in lines if x.startswith("cifar10-ddpm-pure ")).split()[4] == "0..199"
    assert rows["cifar10-ddpm-small"]["steps"] == "0..999" and rows["diffpure-cifar10-ncsnpp"]["steps"] == "0..999"
    assert main(["models", "--kind", "classifier"]) == 0
    assert "cifar10-ddpm-small" not in capsys.readouterr().out
