"""Adaptive L2 regularisation (Ni, Fang and Huttunen, ICPR 2020): Eq. 5-8 checked by hand and by autograd."""
import pytest
import torch
import torch.nn as nn

from reidkit.losses.adaptive_l2 import AdaptiveL2Regularizer, hard_sigmoid, parameter_category


def tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 5))
    model[1].weight.data.uniform_(0.5, 1.5)
    model[1].bias.data.uniform_(-1, 1)
    return model


def test_hard_sigmoid_values():
    x = torch.tensor([-10.0, -2.5, -1.25, 0.0, 1.25, 2.5, 10.0])
    assert hard_sigmoid(x).tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert hard_sigmoid(torch.tensor([1.0]), c=1.0).item() == 1.0


def test_categories_and_frozen_tensors():
    model = tiny_model()
    model[3].bias.requires_grad_(False)
    reg = AdaptiveL2Regularizer.for_model(model)
    assert dict(zip(reg.names, reg.categories)) == {
        "0.weight": "conv_kernel", "0.bias": "conv_bias", "1.weight": "bn_gamma", "1.bias": "bn_beta",
        "3.weight": "dense_kernel"}                       # the frozen dense bias is left out
    assert parameter_category(nn.ReLU(), "weight") is None


def test_penalty_equals_hand_computation_and_per_category_amplitudes():
    model = tiny_model()
    amplitude = {"conv_kernel": 0.01, "bn_gamma": 0.002, "dense_kernel": 0.004}   # others off
    reg = AdaptiveL2Regularizer.for_model(model, amplitude, c=2.5)
    assert reg.names == ["0.weight", "1.weight", "3.weight"]
    with torch.no_grad():
        reg.theta.copy_(torch.tensor([-1.25, 0.0, 5.0]))     # f = 0.25, 0.5, 1
    expected = (0.01 * 0.25 * float((model[0].weight.detach() ** 2).sum())
                + 0.002 * 0.5 * float((model[1].weight.detach() ** 2).sum())
                + 0.004 * 1.0 * float((model[3].weight.detach() ** 2).sum()))
    assert reg().item() == pytest.approx(expected, rel=1e-6)
    assert reg.factors_by_category() == pytest.approx({"conv_kernel": 0.0025, "bn_gamma": 0.001,
                                                       "dense_kernel": 0.004})


def test_gradients_match_the_closed_form():
    model = tiny_model().double()
    reg = AdaptiveL2Regularizer.for_model(model, 0.005, c=2.5).double()
    with torch.no_grad():
        reg.theta.copy_(torch.linspace(-3.0, 3.0, len(reg.theta), dtype=torch.float64))
    reg().backward()
    f = hard_sigmoid(reg.theta.detach())
    inside = (reg.theta.detach().abs() < 2.5).double()
    for i, p in enumerate(reg._tensors):
        # d/dw = 2 A f(theta) w ;  d/dtheta = A f'(theta) ||w||^2 with f' = 1/(2c) inside [-c, c], else 0
        a = reg.amplitude[i]                              # 0.005 as stored (float32, then double)
        torch.testing.assert_close(p.grad, 2 * a * f[i] * p.detach())
        assert reg.theta.grad[i].item() == pytest.approx(float(a * inside[i] / 5.0 * (p.detach() ** 2).sum()),
                                                         rel=1e-12, abs=1e-18)
    theta = reg.theta.detach().clone().requires_grad_()
    norms = torch.stack([(p.detach() ** 2).sum() for p in reg._tensors])
    assert torch.autograd.gradcheck(lambda t: (reg.amplitude * hard_sigmoid(t) * norms).sum(), (theta + 0.01,))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown categories.*'conv'"):
        AdaptiveL2Regularizer.for_model(tiny_model(), {"conv": 0.1})
    with pytest.raises(ValueError, match="nothing to regularise"):
        AdaptiveL2Regularizer.for_model(tiny_model(), 0.0)
    reg = AdaptiveL2Regularizer.for_model(tiny_model())
    other = AdaptiveL2Regularizer.for_model(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="checkpoint has 2 factors, this model 6"):
        reg.load_state_dict(other.state_dict())
