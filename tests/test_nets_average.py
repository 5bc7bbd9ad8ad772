"""Weight averaging (`nets.average`): the mean of the parameters, written in the shipped format, and
clean refusals."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from fusion.coarse import CoarseGridConfig
from fusion.errors import UserError
from nets.average import average_weights, main
from nets.infer import ChunkModel, save_weights
from nets.model import ModelConfig, SemanticCompletionNet


def _write(path, seed: int, config: ModelConfig = ModelConfig()):
    torch.manual_seed(seed)
    net = SemanticCompletionNet(config)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
        for name, b in net.named_buffers():
            if b.dtype.is_floating_point:
                b.uniform_(0.5, 1.5)
            else:
                b.fill_(seed + 1)
    save_weights(path, net, CoarseGridConfig())
    return net.state_dict()


def test_average_is_the_parameter_mean(tmp_path):
    a, b = _write(tmp_path / "a.pt", 1), _write(tmp_path / "b.pt", 2)
    assert main(["--out", str(tmp_path / "m.pt"), str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]) == 0
    mean = ChunkModel.load(tmp_path / "m.pt").net.state_dict()
    for k, v in mean.items():
        if v.dtype.is_floating_point:
            assert torch.allclose(v, (a[k] + b[k]) / 2, atol=1e-6), k
        else:
            assert torch.equal(v, a[k]), k   # integer counters come from the first file
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_mismatched_or_too_few_files_are_refused(tmp_path, caplog):
    _write(tmp_path / "a.pt", 1)
    other = replace(ModelConfig(), channels=tuple(c + 8 for c in ModelConfig().channels))
    _write(tmp_path / "c.pt", 3, other)
    with pytest.raises(UserError, match="another model configuration"):
        average_weights([tmp_path / "a.pt", tmp_path / "c.pt"])
    with pytest.raises(UserError, match="at least two"):
        average_weights([tmp_path / "a.pt"])
    assert main(["--out", str(tmp_path / "m.pt"), str(tmp_path / "a.pt"), str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in caplog.text and not (tmp_path / "m.pt").exists()
