import json

import pytest
import torch
import yaml

from conftest import tiny_overrides
from reidkit.cli import main
from reidkit.engine import CheckpointError, NonFiniteLossError, Trainer
from reidkit.engine.checkpoint import load_checkpoint, load_model_weights
from reidkit.models import build_model
from reidkit.recipe_files import load_recipe


@pytest.mark.slow
def test_training_lowers_loss_and_checkpoint_round_trips(tiny_data, tmp_path, capsys):
    # the BoT objective (with its center loss, which recipes switch on)
    recipe = load_recipe(None, tiny_overrides(tiny_data, tmp_path / "run") + ["center_loss.weight=0.0005"])
    trainer = Trainer(recipe, progress=False)
    result = trainer.fit()
    losses = trainer.history["loss/total"]
    assert losses[-1] < losses[0]
    for name in ("best.pth", "last.pth"):
        state = torch.load(tmp_path / "run" / name, map_location="cpu", weights_only=True)
        assert state["num_classes"] == 8 and isinstance(state["best_mAP"], float)
    assert (tmp_path / "run" / "history.json").is_file()
    assert any((tmp_path / "run" / "tensorboard").iterdir())
    recipe_file = write_recipe(tmp_path, tiny_overrides(tiny_data, tmp_path / "run"))
    code = main(["eval", str(recipe_file), "--weights", str(tmp_path / "run" / "last.pth"),
                 "--report", str(tmp_path / "report_eval"), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"mAP: {100 * result.mAP:.2f}%" in printed


def write_recipe(tmp_path, overrides):
    recipe = load_recipe(None, overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    return path


@pytest.mark.slow
def test_resume_continues_exactly(tiny_data, tmp_path):
    straight = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "a", epochs=2)), progress=False)
    straight.fit()
    first = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "b", epochs=1)), progress=False)
    first.fit()
    resumed = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "b", epochs=2)), progress=False)
    resumed.fit(resume=tmp_path / "b" / "last.pth")
    assert resumed.history["loss/total"] == pytest.approx(straight.history["loss/total"], rel=1e-6)
    assert resumed.history["mAP"] == pytest.approx(straight.history["mAP"], rel=1e-6)


def test_nan_loss_is_reported(tiny_data, tmp_path, monkeypatch):
    trainer = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "nan", epochs=1)), progress=False)
    original = trainer.objective.forward

    def poisoned(*args, **kwargs):
        terms = original(*args, **kwargs)
        terms["triplet"] = terms["triplet"] * float("nan")
        return terms

    monkeypatch.setattr(trainer.objective, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, iteration 1 \(lr 1.00e-03\): .*triplet=nan.*"
                                                 r"No checkpoint of this run was written yet"):
        trainer.fit()


def test_mismatched_checkpoint_is_named(tmp_path):
    model = build_model("resnet18_bnneck", 5, pretrained="none")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "five.pth")
    other = build_model("resnet18_bnneck", 7, pretrained="none")
    with pytest.raises(CheckpointError, match=r"head.classifier.weight: checkpoint \(5, 512\) vs model \(7, 512\)"):
        load_model_weights(other, load_checkpoint(tmp_path / "five.pth"), "five.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")


def test_cli_reports_recipe_errors(capsys):
    assert main(["train", "configs/bot_r50_market1501.yaml", "train.epochz=3"]) == 2
    assert "unknown key 'train.epochz'" in capsys.readouterr().err
    # overrides after an option still count as overrides (argparse alone would refuse them)
    assert main(["train", "configs/bot_r50_market1501.yaml", "--no-progress", "train.epochz=3"]) == 2
    assert "unknown key 'train.epochz'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "configs/bot_r50_market1501.yaml", "--no-progress", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_fixbase_epochs_train_only_the_open_layers(tiny_data, tmp_path):
    recipe = load_recipe(None, tiny_overrides(tiny_data, tmp_path / "fix", epochs=2)
                         + ["train.fixbase_epochs=1", "train.open_layers=[classifier]", "center_loss.weight=0"])
    trainer = Trainer(recipe, progress=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_epoch(0, max_batches=3)
    after1 = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    changed = {k for k in before if not torch.equal(before[k], after1[k])}
    assert changed == {"head.classifier.weight"}          # backbone, BN statistics, BNNeck untouched
    trainer.train_epoch(1, max_batches=3)
    after2 = trainer.model.state_dict()
    assert not torch.equal(after1["backbone.conv1.weight"], after2["backbone.conv1.weight"])
    # every parameter trainable again, except what the model keeps fixed by design (the BNNeck's bias)
    frozen = {n for n, p in trainer.model.named_parameters() if not p.requires_grad}
    assert frozen == {"head.bottleneck.bias"}


def test_unknown_open_layer_is_named(tiny_data, tmp_path):
    recipe = load_recipe(None, tiny_overrides(tiny_data, tmp_path / "bad", epochs=1)
                         + ["train.fixbase_epochs=1", "train.open_layers=[clasifier]"])
    with pytest.raises(ValueError, match="clasifier"):
        Trainer(recipe, progress=False)


@pytest.mark.slow
def test_camera_aware_run_traces_the_miner_per_iteration(tiny_data, tmp_path):
    out = tmp_path / "cam"
    recipe = load_recipe(None, tiny_overrides(tiny_data, out, epochs=2)
                         + ["loss.miner=camera_aware", "data.sampler=camera_diverse", "camera_aware.m=0.5"])
    trainer = Trainer(recipe, progress=False)
    trainer.fit()
    history = json.loads((out / "history.json").read_text())
    trace = history["trace/camera_aware"]
    assert trace["step"] == list(range(1, trainer.step + 1))
    assert history["panels"]["camera_aware"]["right"] == ["bias_positive", "bias_negative"]
    assert len(history["camera_aware/cross_camera_positives"]) == 2                  # epoch means too
    assert all(0.0 <= v <= 1.0 for v in trace["cross_camera_positives"] + trace["same_camera_negatives"])
    assert trace["bias_positive"][0] > trace["bias_positive"][-1] > 0       # decaying schedule (m=0.5)
    assert (out / "curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_adaptive_l2_trains_its_factors_and_resumes_them(tiny_data, tmp_path):
    # the paper's whole setting: regional model, clipped objective modules, features before BN
    adaptive = ["adaptive_l2.amplitude=0.005", "optim.weight_decay=0", "optim.weight_decay_bias=0",
                "model.name=resnet18_regional", "model.region_dim=16", "model.feature_clip=[0, 1]",
                "model.bn_bias=trained", "model.test_feature=before_bn", "center_loss.weight=0"]
    first = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "l2", epochs=1) + adaptive), progress=False)
    reg = first.piece("adaptive_l2").regularizer
    n_weights = sum(1 for n, p in first.model.named_parameters() if p.requires_grad and not n.endswith("bias"))
    assert len(reg.theta) >= n_weights
    assert float(reg.factors().detach()[0]) == pytest.approx(0.0025)   # theta = 0: A / 2
    assert any(g.get("name") == "adaptive_l2" and g["params"][0] is reg.theta and g["weight_decay"] == 0
               and g["lr"] == first.optimizer.param_groups[0]["lr"] for g in first.optimizer.param_groups)
    result = first.fit()
    assert first.last_features[0].shape[1] == 512 + 2 * 16 and 0 <= result.mAP <= 1
    # d(penalty)/d(theta) = A f'(theta) ||w||^2 >= 0 and the task loss does not depend on theta: Adam lowers them
    assert bool((reg.theta < 0).all())
    history = json.loads((tmp_path / "l2" / "history.json").read_text())
    assert history["loss/adaptive_l2"][0] > 0
    assert history["adaptive_l2/conv_kernel"][0] == pytest.approx(
        float(reg.factors().detach()[[i for i, k in enumerate(reg.categories) if k == "conv_kernel"]].mean()))
    factors = json.loads((tmp_path / "l2" / "adaptive_l2_factors.json").read_text())
    conv1 = reg.names.index("backbone.conv1.weight")
    assert factors["backbone.conv1.weight"] == pytest.approx(float(reg.factors().detach()[conv1]))
    resumed = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "l2", epochs=2) + adaptive),
                      progress=False)
    resumed.resume(tmp_path / "l2" / "last.pth")
    assert torch.equal(resumed.piece("adaptive_l2").regularizer.theta, reg.theta)
    plain = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "plain", epochs=1)
                                + ["center_loss.weight=0.0005"]), progress=False)
    plain.train_epoch(0, max_batches=1)
    from reidkit.engine.checkpoint import save_checkpoint
    save_checkpoint(plain.state(1), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match=r"plain.pth was trained with the pieces \['center_loss'\]; "
                                              r"this recipe uses \['adaptive_l2'\]"):
        resumed.resume(tmp_path / "plain.pth")


@pytest.mark.slow
def test_distillation_trains_the_student_against_a_frozen_teacher(tiny_data, tiny_run, tmp_path):
    distill = [f"distillation.teacher={tiny_run / 'best.pth'}", "distillation.arch=resnet18_bnneck",
               "distillation.weight=0.8", "loss.ce_weight=0.2", "center_loss.weight=0"]
    trainer = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "std", epochs=1) + distill),
                      progress=False)
    teacher = trainer.piece("distillation").teacher
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    stats = trainer.train_epoch(0, max_batches=2)
    assert stats["distillation"] > 0 and not teacher.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())   # BN stats too
    assert not any(p.requires_grad for p in teacher.parameters())
    wrong = distill[:1] + ["distillation.arch=resnet50_bnneck"] + distill[2:]
    with pytest.raises(CheckpointError, match=r"best.pth was trained as resnet18_bnneck .*architecture "
                                              r"resnet50_bnneck \(trained: resnet18_bnneck\)"):
        Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "bad", epochs=1) + wrong), progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18_ptl", "resnet18_ptl_v2"])
def test_ptl_cells_restart_every_epoch(tiny_data, tmp_path, name):
    recipe = load_recipe(None, tiny_overrides(tiny_data, tmp_path / "ptl", epochs=2)
                         + [f"model.name={name}", "center_loss.weight=0"])
    trainer = Trainer(recipe, progress=False)
    cells = [trainer.model.image_cell, *trainer.model.cells]
    trainer.train_epoch(0, max_batches=2)
    assert all(c.state is not None and getattr(c, "hidden", 0) is not None for c in cells)
    trainer.train_epoch(1, max_batches=0)                 # the epoch starts, no batch runs
    assert all(c.state is None and getattr(c, "hidden", None) is None for c in cells)


def test_frozen_batchnorm_statistics_stay_as_loaded_while_the_rest_trains(tiny_data, tmp_path):
    recipe = load_recipe(None, tiny_overrides(tiny_data, tmp_path / "frozen", epochs=1) + ["train.bn_stats=frozen"])
    trainer = Trainer(recipe, progress=False)
    bns = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
    conv = trainer.model.backbone.conv1.weight.detach().clone()
    trainer.train_epoch(0, max_batches=3)
    assert all(torch.equal(m.running_mean, a) and torch.equal(m.running_var, b) for m, (a, b) in zip(bns, before))
    assert not torch.equal(trainer.model.backbone.conv1.weight, conv)        # the weights still train
    assert not any(m.training for m in bns) and trainer.model.training
    moving = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "moving", epochs=1)), progress=False)
    m0 = [m.running_mean.clone() for m in moving.model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    moving.train_epoch(0, max_batches=1)
    assert not torch.equal([m for m in moving.model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0].running_mean,
                           m0)


def test_imported_weights_ask_for_frozen_batchnorm(tiny_data, tmp_path):
    from reidkit.engine.checkpoint import save_checkpoint
    osnet = build_model("osnet_x0_25", 5, pretrained="none")
    save_checkpoint({"state_dict": osnet.state_dict(), "bn_stats": "frozen"}, tmp_path / "imported.pth")
    base = tiny_overrides(tiny_data, tmp_path / "ft", epochs=1) + ["model.name=osnet_x0_25",
                                                                  f"model.pretrained={tmp_path / 'imported.pth'}",
                                                                  "loss.triplet_weight=0", "center_loss.weight=0"]
    assert Trainer(load_recipe(None, base), progress=False).piece("bn_stats").mode == "frozen"
    assert Trainer(load_recipe(None, base + ["train.bn_stats=update"]), progress=False).piece("bn_stats") is None
    # what import-onnx asks: real statistics measured first, the imported function kept
    save_checkpoint({"state_dict": osnet.state_dict(), "bn_stats": "recalibrate"}, tmp_path / "folded.pth")
    trainer = Trainer(load_recipe(None, [b.replace("imported.pth", "folded.pth") for b in base]), progress=False)
    assert trainer.piece("bn_stats").mode == "recalibrate"            # measured once, not frozen
    bn = trainer.model.conv1.bn
    assert bn.running_mean.abs().sum() > 0              # measured (a fresh BN holds zeros; its variance is 1 by design)


def test_selection_reads_the_validation_split_never_the_test_set(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "val"
    trainer = Trainer(load_recipe(None, tiny_overrides(tiny_data, out, epochs=3) + ["data.val_identities=2"]),
                      progress=False)
    assert trainer.num_classes == 6 and trainer.select_on == "val"       # 8 train identities, 2 held out
    held = set(trainer.validation.identities)
    val_paths = {r.path for r in trainer.validation.query + trainer.validation.gallery}
    assert len(held) == 2 and val_paths and not val_paths & {r.path for r in trainer.dataset.train}
    test_maps = iter([0.9, 0.1, 0.2])                       # the test set would pick epoch 1
    val_maps = iter([0.1, 0.5, 0.3])                        # validation picks epoch 2
    real_test, real_val = trainer.evaluate, trainer.evaluate_validation

    def fake(real, values):
        def run():
            r = real()
            r.mAP = next(values)
            return r
        return run

    monkeypatch.setattr(trainer, "evaluate", fake(real_test, test_maps))
    monkeypatch.setattr(trainer, "evaluate_validation", fake(real_val, val_maps))
    trainer.fit()
    assert torch.load(out / "best.pth", weights_only=True)["epoch"] == 2
    assert trainer.history["val/mAP"] == [0.1, 0.5, 0.3] and trainer.history["mAP"] == [0.9, 0.1, 0.2]
    split = json.loads((out / "validation_split.json").read_text())
    assert sorted(split["held_out_identities"]) == sorted(held)
    page = (out / "report" / "index.html").read_text()
    assert "best.pth: epoch 2, selected on validation (2 held-out training identities, mAP 50.00%); its test mAP " \
           "10.00%" in page


def test_selecting_on_test_is_explicit_and_flagged(tiny_data, tmp_path, caplog):
    plain = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "p", epochs=1)), progress=False)
    assert plain.select_on == "last"                         # no validation split: nothing reads the test set
    with caplog.at_level("WARNING", logger="reidkit"):
        trainer = Trainer(load_recipe(None, tiny_overrides(tiny_data, tmp_path / "t", epochs=1)
                                      + ["train.select_on=test"]), progress=False)
    assert trainer.select_on == "test" and "read the TEST set" in caplog.text
    from reidkit.config import RecipeError
    with pytest.raises(RecipeError, match="train.select_on=val needs a validation split"):
        load_recipe(None, ["train.select_on=val"])
    with pytest.raises(RecipeError, match="schedule.kind=plateau .* give it a validation split"):
        load_recipe(None, ["schedule.kind=plateau"])
    assert load_recipe("adaptive_l2_r50_market1501").data.val_identities == 100
