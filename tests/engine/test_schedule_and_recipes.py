from pathlib import Path

import pytest
import torch

from reidkit.config import RecipeError, ScheduleConfig
from reidkit.engine.schedulers import WarmupScheduler
from reidkit.recipe_files import load_recipe

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def lrs(cfg: ScheduleConfig, epochs, total=120, base=3.5e-4):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = WarmupScheduler(opt, cfg, total)
    out = []
    for e in epochs:
        sched.set_epoch(e)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_bot_warmup_multistep_values():
    cfg = ScheduleConfig(kind="multistep", warmup_epochs=10, warmup_factor=0.01, milestones=[40, 70])
    got = lrs(cfg, [0, 5, 9, 10, 39, 40, 69, 70, 119])
    base = 3.5e-4
    expected = [0.01, 0.01 * 0.5 + 0.5, 0.01 * 0.1 + 0.9, 1, 1, 0.1, 0.1, 0.01, 0.01]
    assert got == pytest.approx([base * e for e in expected])


def test_cosine_and_plateau():
    cfg = ScheduleConfig(kind="cosine", warmup_epochs=2, warmup_factor=0.1)
    got = lrs(cfg, [0, 2, 6, 10], total=10, base=1.0)
    assert got == pytest.approx([0.1, 1.0, 0.5, 0.0], abs=1e-9)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupScheduler(opt, ScheduleConfig(kind="plateau", warmup_epochs=0, patience=2), 10)
    for epoch, metric in enumerate([0.5, 0.6, 0.6, 0.55]):
        sched.set_epoch(epoch)
        sched.observe(metric)
    sched.set_epoch(4)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_every_shipped_recipe_loads():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        load_recipe(f)
    bot = load_recipe(CONFIGS / "bot_r50_market1501.yaml")
    assert (bot.optim.lr, bot.schedule.milestones, bot.train.epochs) == (3.5e-4, [40, 70], 120)
    assert (bot.loss.triplet_margin, bot.center_loss.weight, bot.loss.label_smoothing) == (0.3, 5e-4, 0.1)
    assert (bot.data.sampler, bot.data.num_identities, bot.data.num_instances, bot.data.height) == \
        ("identity", 16, 4, 256)
    ft = load_recipe(CONFIGS / "osnet_x1_0_finetune_cuhk03.yaml")      # OSNet paper, sec. 4.1
    assert (ft.optim.name, ft.optim.lr, ft.train.epochs, ft.schedule.milestones) == ("amsgrad", 0.0015, 150, [60, 120])
    assert (ft.train.fixbase_epochs, ft.train.open_layers, ft.schedule.gamma) == (10, ["classifier"], 0.1)
    al2 = load_recipe(CONFIGS / "adaptive_l2_r50_market1501.yaml")     # the authors' code (METHODS.md sec. 3)
    assert (al2.adaptive_l2.amplitude, al2.adaptive_l2.c, al2.adaptive_l2.theta_init) == (0.005, 2.5, 0)
    assert (al2.optim.name, al2.optim.lr, al2.optim.weight_decay, al2.data.height) == ("adam", 2e-4, 0.0, 384)
    assert (al2.model.feature_clip, al2.model.test_feature, al2.model.regions) == ((0.0, 1.0), "before_bn", 2)
    assert (al2.model.reduction, al2.loss.triplet_margin, al2.eval.flip) == ("authors", None, True)   # soft margin
    assert (al2.schedule.kind, al2.schedule.milestones, al2.schedule.min_lr, al2.train.epochs) == (
        "multistep", [40, 70], 2e-6, 200)                     # fixed steps: /10 every 30 epochs after 10 warmup
    assert (al2.train.fixbase_epochs, al2.schedule.warmup_epochs, al2.schedule.warmup_factor) == (20, 10, 0.01)
    std = load_recipe(CONFIGS / "std_osnet_x0_25_cuhk03.yaml")             # PTL paper, STD (Eq. 4)
    assert (std.distillation.weight, std.loss.ce_weight, std.optim.lr, std.train.epochs) == (0.8, 0.2, 0.01, 50)
    assert std.schedule.milestones == [10, 20, 30, 40] and std.optim.name == "sgd"
    ptl = load_recipe(CONFIGS / "ptl_r50_msmt17.yaml")                     # PTL paper: lr 0.01 /10 every 10, 50 ep.
    assert (ptl.model.name, ptl.optim.lr, ptl.schedule.milestones, ptl.train.epochs) == (
        "resnet50_ptl", 0.01, [10, 20, 30, 40], 50)
    dense = load_recipe(CONFIGS / "ptl_densenet161_msmt17.yaml")           # the paper's backbone, same settings
    assert dense.model_dump(exclude={"model", "train", "data"}) == ptl.model_dump(exclude={"model", "train", "data"})
    assert (dense.model.name, dense.data.batch_size, ptl.data.batch_size) == ("densenet161_ptl", 32, 64)
    for r in (ptl, dense):          # the paper's head and plain cross-entropy, ImageNet weights or an error
        assert (r.model.ptl_head, r.loss.label_smoothing, r.model.pretrained) == ("paper", 0.0, "imagenet")
    assert (dense.model.cell_ratio, ptl.model.cell_ratio) == (8, 4)
    scratch = load_recipe(CONFIGS / "osnet_x0_25_cuhk03.yaml")
    assert (scratch.optim.name, scratch.optim.lr, scratch.schedule.milestones) == ("sgd", 0.065, [150, 225, 300])


def test_overrides_and_errors_name_the_key(tmp_path):
    r = load_recipe(CONFIGS / "bot_r50_market1501.yaml", ["train.epochs=5", "loss.triplet_margin=null"])
    assert r.train.epochs == 5 and r.loss.triplet_margin is None
    with pytest.raises(RecipeError, match="unknown key 'train.epoch'"):
        load_recipe(None, ["train.epoch=5"])
    with pytest.raises(RecipeError, match="train.epochs"):
        load_recipe(None, ["train.epochs=many"])
    with pytest.raises(RecipeError, match="optim.name"):
        load_recipe(None, ["optim.name=adagrad"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nmae: resnet50_bnneck\n")
    with pytest.raises(RecipeError, match=r"unknown key 'model.nmae'.*bad.yaml|bad.yaml(.|\n)*model.nmae"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="recipe not found: .*missing.yaml"):
        load_recipe(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="key.path=value"):
        load_recipe(None, ["train.epochs"])


def test_yaml_scalars_follow_yaml_1_2(tmp_path):
    """'off' is a schedule name, not False; 1e-3 is a float, not a string (PyYAML's 1.1 rules).  (Dataset options
    are checked by name when the recipe loads: the keys below are ones their loaders take.)"""
    recipe = load_recipe(None, ["camera_aware.schedule=off", "optim.lr=1e-3", "train.amp=true",
                                "data.dataset=cuhk03", "data.options={boxes: on}"])
    assert recipe.camera_aware.schedule == "off"
    assert recipe.optim.lr == 0.001 and isinstance(recipe.optim.lr, float)
    assert recipe.train.amp == "bf16"                       # true: bfloat16 autocast
    assert recipe.data.options == {"boxes": "on"}
    path = tmp_path / "r.yaml"
    path.write_text("loss:\n  camera_bias: {schedule: off}\ndata:\n  dataset: cuhk01\n  options: {seed: 2e-1}\n"
                    "model: {name: resnet18_bnneck}\n")
    recipe = load_recipe(path)
    assert recipe.camera_aware.schedule == "off" and recipe.data.options["seed"] == 0.2


def test_recipes_choose_and_record_their_sampler():
    assert load_recipe(None).data.sampler == "identity"                              # triplet loss on
    softmax = load_recipe(None, ["loss.triplet_weight=0"])
    assert softmax.data.sampler == "random" and softmax.model_dump()["data"]["sampler"] == "random"
    for path, expected in (("osnet_x0_25_cuhk03.yaml", "random"), ("osnet_x0_25_cuhk03_amsgrad.yaml", "random"),
                           ("osnet_x1_0_appendix_cuhk03.yaml", "identity"), ("bot_r50_market1501.yaml", "identity"),
                           ("bot_camaware_r18_cuhk03.yaml", "camera_diverse")):
        assert load_recipe(CONFIGS / path).data.sampler == expected, path
    amsgrad = load_recipe(CONFIGS / "osnet_x0_25_cuhk03_amsgrad.yaml")
    assert (amsgrad.optim.name, amsgrad.optim.lr, amsgrad.optim.betas) == ("amsgrad", 0.0015, (0.9, 0.99))
    with pytest.raises(RecipeError, match="data.sampler=random gives no positive pairs for the triplet loss"):
        load_recipe(None, ["data.sampler=random"])
    with pytest.raises(RecipeError, match="data.batch_size=30 is not a multiple of data.num_instances=4"):
        load_recipe(None, ["data.batch_size=30"])
    with pytest.raises(RecipeError, match=r"data.num_identities was replaced by data.batch_size"):
        load_recipe(None, ["data.num_identities=16"])
    with pytest.raises(RecipeError, match="data.camera_diverse was replaced by data.sampler=camera_diverse"):
        load_recipe(None, ["data.camera_diverse=true"])


def test_device_and_precision_keys():
    r = load_recipe(None, ["train.device=cuda:1", "train.amp=fp16", "train.threads=4"])
    assert (r.train.device, r.train.amp, r.train.threads, r.train.sync_bn) == ("cuda:1", "fp16", 4, True)
    assert load_recipe(None, ["train.amp=false"]).train.amp == "off"
    with pytest.raises(RecipeError, match="train.device: must be auto, cpu, cuda or cuda:N"):
        load_recipe(None, ["train.device=gpu"])
    with pytest.raises(RecipeError, match="train.amp"):
        load_recipe(None, ["train.amp=fp8"])


def test_recipes_ship_with_the_package_and_inherit_from_a_base(tmp_path, capsys):
    from reidkit.cli import main
    from reidkit.recipe_files import PACKAGED_RECIPES, recipe_to_dict
    assert load_recipe("bot_r50_market1501") == load_recipe(PACKAGED_RECIPES / "bot_r50_market1501.yaml")
    assert load_recipe("bot_r50_market1501.yaml").model.name == "resnet50_bnneck"
    with pytest.raises(RecipeError, match=r"recipe not found: bot_r50_market1502 .*did you mean 'bot_r50_market1501'"):
        load_recipe("bot_r50_market1502")
    assert main(["recipes"]) == 0
    assert "osnet_x0_25_cuhk03_amsgrad" in capsys.readouterr().out
    # a child states only what differs; sections merge key by key, a base may itself have a base
    (tmp_path / "base.yaml").write_text("_base_: bot_r18_cuhk03\ntrain: {epochs: 3, seed: 7}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\ntrain: {epochs: 5}\noptim: {lr: 0.01}\n")
    child, bot = load_recipe(tmp_path / "child.yaml"), load_recipe("bot_r18_cuhk03")
    assert (child.train.epochs, child.train.seed, child.optim.lr, child.optim.name) == (5, 7, 0.01, bot.optim.name)
    assert recipe_to_dict(child)["data"] == recipe_to_dict(bot)["data"]
    cam = load_recipe("bot_camaware_r18_cuhk03")          # the shipped example: the baseline is its base
    assert (cam.loss.miner, cam.data.sampler, cam.optim, cam.augment) == ("camera_aware", "camera_diverse", bot.optim,
                                                                          bot.augment)
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(RecipeError, match="recipe inheritance loops"):
        load_recipe(tmp_path / "a.yaml")


def test_the_unsupervised_recipes_carry_their_authors_settings():
    """Cluster Contrast's run_code.sh / argparse defaults and CAP's train_cap.py, read off the shipped recipes."""
    cc = load_recipe(CONFIGS / "usl_r50_market1501.yaml")
    m = cc.cluster_memory
    assert (cc.data.batch_size, cc.data.num_instances, cc.data.sampler, cc.train.iterations) == \
        (256, 16, "cross_camera", 200)                                  # -b 256 --num-instances 16 --iters 200
    assert (m.eps, m.min_samples, m.k1, m.k2, m.momentum, m.temperature, m.update, m.flip) == \
        (0.6, 4, 30, 6, 0.1, 0.05, "instance", False)                  # --eps 0.6 --momentum 0.1, --temp 0.05
    assert (cc.model.options()["pooling"], cc.augment.erasing_fill, cc.optim.lr, cc.train.epochs) == \
        ("gem", "reference_code", 3.5e-4, 50)                          # --pooling-type gem, RandomErasing(mean)
    assert load_recipe(CONFIGS / "usl_r50_msmt17.yaml").train.iterations == 400
    cap = load_recipe(CONFIGS / "cap_r50_market1501.yaml")
    c = cap.cluster_memory
    assert (cap.data.batch_size, cap.data.num_instances, cap.data.sampler, cap.train.iterations) == \
        (32, 4, "identity_camera_uniform", "images")
    assert (c.memory, c.eps, c.k1, c.k2, c.temperature, c.momentum, c.inter_from_epoch, c.hard_negatives,
            c.inter_weight) == ("camera_proxy", 0.5, 20, 6, 0.07, 0.2, 5, 50, 0.5)
    s = cap.schedule
    assert (s.warmup_epochs, s.warmup_factor, s.milestones, s.step_at, tuple(cap.augment.erasing_area)) == \
        (10, 0.01, [20, 40], "epoch_start", (0.02, 0.2))
