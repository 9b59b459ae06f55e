"""Margin-based identity losses (issue 37, item 4): each against its equation on hand-computed cosines, Circle's
weights held constant in the gradient, the cosine classifier, and a recipe that trains with each."""
import math

import pytest
import torch
import torch.nn.functional as F

from reidkit.losses.margin import MarginIdentityLoss, arcface_logits, circle_logits, cosface_logits
from reidkit.models.heads import BNNeckHead
from reidkit.recipe_files import load_recipe

COS = torch.tensor([[0.8, 0.1, -0.3]])
TARGET = torch.tensor([0])


def test_cosface_subtracts_the_margin_from_the_target_cosine():
    assert cosface_logits(COS, TARGET, 10.0, 0.2).tolist()[0] == pytest.approx([6.0, 1.0, -3.0])


def test_arcface_adds_the_margin_to_the_target_angle_and_continues_past_pi():
    # cos(acos(0.8) + 0.2) = 0.8 cos 0.2 - 0.6 sin 0.2
    expected = 0.8 * math.cos(0.2) - 0.6 * math.sin(0.2)
    assert arcface_logits(COS, TARGET, 10.0, 0.2).tolist()[0] == pytest.approx([10 * expected, 1.0, -3.0])
    # theta + m beyond pi (cos -0.99 <= cos(pi - 0.5)): the logit continues as cos - m sin m, still falling
    far = arcface_logits(torch.tensor([[-0.99, 0.2]]), TARGET, 1.0, 0.5)[0, 0].item()
    assert far == pytest.approx(-0.99 - 0.5 * math.sin(0.5))
    a, b = arcface_logits(torch.tensor([[-0.8, 0.0], [-0.9, 0.0]]), torch.tensor([0, 0]), 1.0, 0.5)[:, 0].tolist()
    assert a > b                                    # monotone in the cosine on both sides of the switch


def test_circle_weighs_each_logit_by_its_distance_to_its_optimum():
    # m 0.25: target a_p = 1.25 - 0.8 = 0.45, d_p = 0.75; others a_n = [cos + 0.25]_+, d_n = 0.25
    got = circle_logits(COS, TARGET, 10.0, 0.25).tolist()[0]
    assert got == pytest.approx([10 * 0.45 * 0.05, 10 * 0.35 * (0.1 - 0.25), 0.0])


def test_circle_weights_are_constants_in_the_gradient():
    cos = COS.clone().requires_grad_(True)
    circle_logits(cos, TARGET, 10.0, 0.25).sum().backward()
    assert cos.grad.tolist()[0] == pytest.approx([10 * 0.45, 10 * 0.35, 0.0])   # s * a, not d(a (cos - d))/dcos


@pytest.mark.parametrize("kind", ["cosface", "arcface", "circle"])
def test_the_loss_is_the_cross_entropy_of_the_margin_logits(kind):
    cos = torch.rand(5, 7) * 2 - 1
    targets = torch.tensor([0, 3, 6, 2, 2])
    loss = MarginIdentityLoss(kind, 16.0, 0.3)
    margin_logits = {"cosface": cosface_logits, "arcface": arcface_logits, "circle": circle_logits}[kind]
    logits = margin_logits(cos, targets, 16.0, 0.3)
    assert loss(cos, targets).item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    assert MarginIdentityLoss(kind).scale == 64.0                      # the published default when none is given
    with pytest.raises(ValueError, match="needs cosine logits"):
        loss(cos * 5, targets)


def test_the_cosine_classifier_gives_cosines():
    head = BNNeckHead(8, 4, classifier="cosine").train()
    f_t = torch.randn(6, 8)
    logits, _ = head(f_t)
    f_i = head.bottleneck(f_t)
    expected = F.normalize(f_i, dim=1) @ F.normalize(head.classifier.weight, dim=1).t()
    assert torch.allclose(logits, expected, atol=1e-6) and logits.abs().max() <= 1.0


def test_the_recipe_pairs_a_margin_loss_with_the_cosine_classifier():
    recipe = load_recipe(None, ["loss.id_loss=arcface", "model.classifier=cosine", "loss.id_loss_margin=0.4"])
    assert recipe.model.options()["classifier"] == "cosine"
    with pytest.raises(ValueError, match="model.classifier=cosine"):
        load_recipe(None, ["loss.id_loss=circle"])
    with pytest.raises(ValueError, match="belong to a margin loss"):
        load_recipe(None, ["loss.id_loss_scale=30"])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cosface", "arcface", "circle"])
def test_a_margin_loss_trains_a_model(kind, tiny_data, tmp_path):
    import json

    from conftest import tiny_overrides
    from reidkit.engine import Trainer
    out = tmp_path / kind
    recipe = load_recipe(None, tiny_overrides(tiny_data, out, epochs=2)
                         + [f"loss.id_loss={kind}", "model.classifier=cosine", "loss.id_loss_scale=16"])
    Trainer(recipe, progress=False).fit()
    history = json.loads((out / "history.json").read_text())
    ids = history["loss/id"]
    assert all(math.isfinite(x) for x in ids) and ids[-1] < ids[0]      # it learns: the id term falls
