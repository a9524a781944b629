"""The GPU fast paths, run on CPU against the plain path: same numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_nonfinite import make_trainer  # noqa: E402


def test_channels_last_computes_what_contiguous_does(tmp_path, cache):
    torch.manual_seed(0)
    plain = make_trainer(tmp_path / "a", cache, "trainer.memory_format=contiguous",
                         "trainer.num_workers=0")
    fast = make_trainer(tmp_path / "b", cache, "trainer.memory_format=channels_last",
                        "trainer.num_workers=0")
    fast.model.load_state_dict(plain.model.state_dict())
    assert fast.channels_last and not plain.channels_last
    batch = next(iter(plain.data.loaders["train"]))
    results = []
    for trainer in (plain, fast):
        built = trainer.inputs(batch)
        inputs, target = built.inputs, built.target
        # Eval mode: BatchNorm with running statistics is well conditioned, so the comparison
        # is tight; in train mode, BatchNorm over a 2-sample batch of 1x2 maps deep in the net
        # amplifies the rounding of the other kernels into percent-level gradient noise.
        trainer.model.eval()
        logits = trainer.model(inputs)
        loss = trainer.criterion(logits, target)
        loss.backward()
        results.append((inputs, logits.detach(), loss.item(),
                        [p.grad.clone() for p in trainer.model.parameters()]))
    (x0, y0, l0, g0), (x1, y1, l1, g1) = results
    assert x1.is_contiguous(memory_format=torch.channels_last) and torch.equal(x0, x1)
    # Other kernels sum in another order: float32 rounding, nothing more (a layout mix-up
    # would give unrelated numbers).
    torch.testing.assert_close(y0, y1, rtol=1e-3, atol=1e-3)
    assert abs(l0 - l1) < 1e-4
    flat0, flat1 = torch.cat([g.ravel() for g in g0]), torch.cat([g.ravel() for g in g1])
    assert (flat0 - flat1).norm() <= 1e-4 * flat0.norm()
