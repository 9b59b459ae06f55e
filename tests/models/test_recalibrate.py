import copy

import torch
import torch.nn as nn

from reidkit.models import build_model
from reidkit.models.recalibrate import batchnorm_producers, recalibrate_batchnorm


def folded(model: nn.Module) -> nn.Module:
    """What an ONNX export + import leaves: each BatchNorm folded into its producer, an identity BN behind."""
    with torch.no_grad():
        for producer, bn in batchnorm_producers(model):
            a = bn.weight / (bn.running_var + bn.eps).sqrt()
            producer.weight.mul_(a.view((-1,) + (1,) * (producer.weight.dim() - 1)))
            bn.bias.copy_(bn.bias - a * bn.running_mean)
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    return model


def test_recalibration_keeps_the_function_and_makes_train_mode_agree():
    torch.manual_seed(0)
    model = build_model("osnet_x0_25", 5, pretrained="none")
    images = torch.randn(48, 3, 64, 32)
    model.train()
    for _ in range(3):                                      # realistic, non-trivial running statistics
        model(images[:16])
    model.eval()
    with torch.no_grad():
        reference = model(images[:8])
    model = folded(model)

    def train_vs_eval(m: nn.Module) -> float:
        """How far train mode (batch statistics) is from eval mode, on a copy (train mode updates statistics)."""
        m = copy.deepcopy(m)
        with torch.no_grad():
            evaluated = m.eval()(images[:16])
            return float((m.train()(images[:16])[1] - evaluated).norm() / evaluated.norm())

    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images[:8]), reference, atol=1e-4, rtol=1e-4)   # folding is exact
    before = train_vs_eval(model)
    count = recalibrate_batchnorm(model, [images[i:i + 16] for i in range(0, 48, 16)])
    assert count == len(batchnorm_producers(model)) > 50
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(images[:8]), reference, atol=1e-4, rtol=1e-4)   # the same function
    assert train_vs_eval(model) < 0.25 * before               # batch statistics now close to the running ones
