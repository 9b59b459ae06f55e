"""reidkit's training step for the OSNet from-scratch recipe is torchreid 0.2.5's, step for step.

Same weights and batches: reidkit's objective (label-smoothed CE) and optimiser
(built from configs/osnet_x0_25_cuhk03.yaml) against torchreid's
``CrossEntropyLoss(label_smooth=True)`` and ``build_optimizer("sgd")``.
"""
import copy
import warnings
from pathlib import Path

import pytest
import torch

from reidkit.config import load_recipe
from reidkit.engine.objective import BoTObjective
from reidkit.engine.optim import build_optimizer
from reidkit.models import build_model

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "osnet_x0_25_cuhk03.yaml"


def test_osnet_recipe_sgd_steps_equal_torchreid():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchreid.reid as tr
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"torchreid 0.2.5 not installed ({e}); `make bench-peers` installs it")
    recipe = load_recipe(RECIPE)
    classes = 9
    torch.manual_seed(0)
    theirs = tr.models.build_model("osnet_x0_25", num_classes=classes, loss="softmax", pretrained=False)
    ours = build_model("osnet_x0_25", classes)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    their_opt = tr.optim.build_optimizer(theirs, optim="sgd", lr=recipe.optim.lr,
                                         weight_decay=recipe.optim.weight_decay, momentum=recipe.optim.momentum)
    their_loss = tr.losses.CrossEntropyLoss(classes, use_gpu=False, label_smooth=True)
    our_opt = build_optimizer(ours, recipe.optim)
    objective = BoTObjective(recipe.loss, classes, ours.feature_dim)
    before = copy.deepcopy(ours.state_dict())
    theirs.train(), ours.train()
    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x = torch.randn(8, 3, 64, 32, generator=gen)
        y = torch.randint(0, classes, (8,), generator=gen)
        their_opt.zero_grad()
        loss_theirs = their_loss(theirs(x), y)
        loss_theirs.backward()
        their_opt.step()
        logits, features = ours(x)
        loss_ours = sum(objective(logits, features, y, torch.zeros_like(y)).values())
        our_opt.zero_grad()
        loss_ours.backward()
        our_opt.step()
        torch.testing.assert_close(loss_ours, loss_theirs, atol=1e-5, rtol=1e-5)
    # compare the updates, not the weights: a missing weight-decay term would hide in the weights' size
    theirs_after = theirs.state_dict()
    for name, p in ours.state_dict().items():
        if p.is_floating_point():
            ours_delta, theirs_delta = p - before[name], theirs_after[name] - before[name]
            assert theirs_delta.abs().max() > 0, name
            torch.testing.assert_close(ours_delta, theirs_delta, atol=1e-3 * float(theirs_delta.abs().max()),
                                       rtol=1e-3, msg=lambda m: f"{name}: {m}")
