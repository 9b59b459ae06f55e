"""reidkit's training step for the OSNet from-scratch recipes is torchreid 0.2.5's, step for step.

Same weights and batches: reidkit's objective (label-smoothed CE) and optimiser
(built from configs/osnet_x0_25_cuhk03.yaml: SGD; configs/osnet_x0_25_cuhk03_amsgrad.yaml:
AMSGrad with torchreid's betas) against torchreid's ``CrossEntropyLoss(label_smooth=True)``
and ``build_optimizer`` with its defaults.
"""
import copy
from pathlib import Path

import pytest
import torch

from reidkit.engine.optim import build_optimizer
from reidkit.losses.objective import ReIDObjective
from reidkit.models import build_model
from reidkit.recipe_files import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "configs" / "osnet_x0_25_cuhk03.yaml"


@pytest.mark.parametrize("recipe_file", ["osnet_x0_25_cuhk03.yaml", "osnet_x0_25_cuhk03_amsgrad.yaml"])
def test_osnet_recipe_steps_equal_torchreid(recipe_file, torchreid):
    tr = torchreid
    recipe = load_recipe(ROOT / "configs" / recipe_file)
    classes = 9
    torch.manual_seed(0)
    theirs = tr.models.build_model("osnet_x0_25", num_classes=classes, loss="softmax", pretrained=False)
    ours = build_model("osnet_x0_25", classes)
    ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
    # torchreid's defaults for everything the recipe does not set (Adam betas 0.9 / 0.99, momentum 0.9)
    their_opt = tr.optim.build_optimizer(theirs, optim=recipe.optim.name, lr=recipe.optim.lr,
                                         weight_decay=recipe.optim.weight_decay)
    their_loss = tr.losses.CrossEntropyLoss(classes, use_gpu=False, label_smooth=True)
    our_opt = build_optimizer(ours, recipe.optim)
    objective = ReIDObjective(recipe.loss)
    before = copy.deepcopy(ours.state_dict())
    theirs.train(), ours.train()
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
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
                                       rtol=1e-3, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.slow
@pytest.mark.usefixtures("torchreid")
def test_osnet_trainer_epochs_equal_torchreid_engine_on_the_same_batches(tmp_path):
    """reidkit's whole training loop (``Trainer.train_epoch``: loader, objective, optimiser, schedule, BN
    statistics) against torchreid's ``ImageSoftmaxEngine.forward_backward``, same weights, same batches.

    OSNet's gradients at initialisation are ill-conditioned (fp32 vs fp64: ~0.5% median relative error,
    experiments/channels_last_precision.py), so two exact implementations that round differently drift
    apart within a few steps at the recipe's lr.  A tiny lr keeps the two trajectories together, and any
    real difference (lr, schedule, weight decay, momentum, loss, which batch) still shows as an O(1)
    difference in the updates.
    """
    from bench.peers import TorchreidLockstep
    from reidkit.data.synthesis import generate
    from reidkit.engine import Trainer

    root = tmp_path / "synthetic"
    generate(root, num_ids=24, num_cameras=2, seed=3, images_per_camera=(2, 3), num_distractors=2, quiet=True)
    recipe = load_recipe(RECIPE, ["data.dataset=synthetic", f"data.root={root}", "data.options={num_cameras: 2}",
                                  "data.height=64", "data.width=32", "data.batch_size=16",
                                  "data.num_instances=4", "optim.lr=1e-6", "train.epochs=2",
                                  "schedule.milestones=[1]",
                                  "train.channels_last=false", f"train.output_dir={tmp_path / 'run'}"])
    trainer = Trainer(recipe, progress=False)
    before = copy.deepcopy(trainer.model.state_dict())
    lockstep = TorchreidLockstep(trainer)
    theirs, ours_losses, theirs_losses = lockstep.model, lockstep.ours_losses, lockstep.theirs_losses
    for epoch in range(2):                  # the learning rate drops x0.1 after epoch 1 on both sides
        trainer.train_epoch(epoch)
        lockstep.step_scheduler()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-7)
    assert len(ours_losses) == len(theirs_losses) >= 6
    torch.testing.assert_close(torch.tensor(ours_losses), torch.tensor(theirs_losses), atol=0, rtol=1e-5)
    ours_state, theirs_state = trainer.model.state_dict(), theirs.state_dict()

    def update_error(names) -> float:
        ours_update = torch.cat([(ours_state[n] - before[n]).flatten() for n in names])
        theirs_update = torch.cat([(theirs_state[n] - before[n]).flatten() for n in names])
        assert theirs_update.norm() > 0
        return float((ours_update - theirs_update).norm() / theirs_update.norm())

    assert update_error([n for n, _ in theirs.named_parameters()]) < 2e-2       # seen: 0.6%
    assert update_error(["classifier.weight", "classifier.bias"]) < 1e-3         # seen: 0.008%
    for name in (n for n in theirs_state if "running" in n):
        torch.testing.assert_close(ours_state[name], theirs_state[name], atol=1e-6, rtol=1e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")
