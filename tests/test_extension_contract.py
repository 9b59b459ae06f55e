"""The extension contract: a method, a loss term or a miner is added by one module, from outside reidkit.

This test module is that outside module.  It registers a training piece (an embedding-norm penalty with its own
typed recipe section, diagnostics, evaluation hooks and checkpointed state) and a miner (hardest positive, a
seeded random negative, with options), then trains with them through the public recipe interface, without any
edit of reidkit/.  docs/ARCHITECTURE.md's "Adding a method" walks through the same code.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
import torch
import torch.nn as nn
from pydantic import BaseModel, ConfigDict, Field

from conftest import tiny_overrides
from reidkit import sections
from reidkit.config import RecipeError
from reidkit.engine import Trainer
from reidkit.engine.checkpoint import load_checkpoint
from reidkit.evaluation import RankResult
from reidkit.losses import BatchHardMiner, Triplets
from reidkit.pieces import PieceContext, StepOutputs, TrainingPiece, register_piece
from reidkit.recipe_files import load_recipe
from reidkit.sections import register_miner


# -- the outside module: a piece and a miner, each with its recipe section ----------------------------------------
class EmbeddingNormConfig(BaseModel):
    """The recipe section ``embedding_norm``."""

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(0.0, ge=0)        # 0: off
    target: float = Field(1.0, gt=0)


class EmbeddingNormPiece(TrainingPiece):
    """``weight * mean((||f|| - target)^2)`` over the global batch; records the mean norm and what it saw of
    every evaluation."""

    def __init__(self, cfg: EmbeddingNormConfig):
        self.cfg, self.steps, self.norm = cfg, 0, 0.0
        self.evaluated: list[tuple[int, float]] = []
        self.prepared: list[tuple[int, int]] = []

    def extra_loss(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        norms = out.features[0].float().norm(dim=1)
        self.steps += 1
        self.norm = float(norms.detach().mean())
        return {"embedding_norm": self.cfg.weight * (norms - self.cfg.target).pow(2).mean()}

    def diagnostics(self) -> dict[str, float]:
        return {"mean_norm": self.norm}

    def before_evaluation(self, models: Sequence[nn.Module], epoch: int) -> None:
        self.prepared.append((epoch, len(models)))

    def after_evaluation(self, epoch: int, test: RankResult, validation: RankResult | None) -> None:
        self.evaluated.append((epoch, test.mAP))

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


class RandomNegativeConfig(BaseModel):
    """The recipe section ``random_negative`` (options of the miner of that name)."""

    model_config = ConfigDict(extra="forbid")
    seed: int = 0


class RandomNegativeMiner(BatchHardMiner):
    """The hardest positive and a random negative (seeded) for every anchor."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.calls = 0

    def __call__(self, dist: torch.Tensor, pids: torch.Tensor, camids: torch.Tensor | None = None) -> Triplets:
        self.calls += 1
        d = dist.detach()
        pos_mask, neg_mask = self.masks(d, pids)
        positive = d.masked_fill(~pos_mask, float("-inf")).argmax(dim=1)
        scores = torch.rand(d.shape, generator=self.gen).to(d.device).masked_fill(~neg_mask, -1.0)
        return Triplets(positive, scores.argmax(dim=1))


def _build_embedding_norm(ctx: PieceContext[EmbeddingNormConfig]) -> EmbeddingNormPiece | None:
    return EmbeddingNormPiece(ctx.config) if ctx.config.weight > 0 else None


def _build_random_negative(cfg: RandomNegativeConfig) -> RandomNegativeMiner:
    return RandomNegativeMiner(cfg.seed)


@pytest.fixture
def outside_method():
    """Registers the piece and the miner as an outside module would at import, and forgets them afterwards."""
    register_piece("embedding_norm", config=EmbeddingNormConfig)(_build_embedding_norm)
    register_miner("random_negative", config=RandomNegativeConfig)(_build_random_negative)
    yield
    sections.PIECES.unregister("embedding_norm")
    sections.MINERS.unregister("random_negative")


# -- the contract -----------------------------------------------------------------------------------------------
def test_a_piece_and_a_miner_from_outside_the_package_train(outside_method, tiny_data, tmp_path):
    out = tmp_path / "run"
    recipe = load_recipe(None, [*tiny_overrides(tiny_data, out, epochs=2), "embedding_norm.weight=0.05",
                                "embedding_norm.target=2", "loss.miner=random_negative", "random_negative.seed=3"])
    assert recipe.section("embedding_norm") == EmbeddingNormConfig(weight=0.05, target=2.0)
    trainer = Trainer(recipe, progress=False)
    piece, miner = trainer.piece("embedding_norm"), trainer.objective.miner
    assert isinstance(piece, EmbeddingNormPiece) and isinstance(miner, RandomNegativeMiner)
    trainer.fit()
    h = trainer.history
    # the piece's loss term, its diagnostics and the miner all ran at every step, under their one name
    assert len(h["loss/embedding_norm"]) == 2 and all(v > 0 for v in h["loss/embedding_norm"])
    assert len(h["embedding_norm/mean_norm"]) == 2
    assert piece.steps == trainer.step == miner.calls > 0
    assert len(h["loss/triplet"]) == 2
    # the evaluation hooks saw every evaluation, with the results the history recorded
    assert piece.prepared == [(0, 1), (1, 1)]
    assert [e for e, _ in piece.evaluated] == [0, 1]
    assert [m for _, m in piece.evaluated] == pytest.approx(h["mAP"])
    # checkpoints and the recorded recipe carry the outside method like a built-in one
    assert load_checkpoint(out / "last.pth")["pieces"]["embedding_norm"] == {"steps": trainer.step}
    saved = json.loads((out / "recipe.json").read_text())
    assert saved["embedding_norm"] == {"weight": 0.05, "target": 2.0} and saved["loss"]["miner"] == "random_negative"
    assert saved["random_negative"] == {"seed": 3}


def test_the_miner_picks_a_true_positive_and_a_true_negative(outside_method):
    g = torch.Generator().manual_seed(0)
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    dist = torch.cdist(torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g))
    t = RandomNegativeMiner(5)(dist, pids)
    assert all(pids[t.positive[i]] == pids[i] and t.positive[i] != i for i in range(7))
    assert all(pids[t.negative[i]] != pids[i] for i in range(7))
    assert torch.equal(RandomNegativeMiner(5)(dist, pids).negative, t.negative)        # seeded


def test_off_by_its_section_and_resumed_with_its_state(outside_method, tiny_data, tmp_path):
    base = tiny_overrides(tiny_data, tmp_path / "run", epochs=1)
    assert Trainer(load_recipe(None, [*base, "embedding_norm.weight=0"]), progress=False).piece("embedding_norm") \
        is None
    on = [*base, "embedding_norm.weight=0.05"]
    first = Trainer(load_recipe(None, on), progress=False)
    first.fit()
    resumed = Trainer(load_recipe(None, [*on, "train.epochs=2"]), progress=False)
    resumed.fit(resume=tmp_path / "run" / "last.pth")
    assert resumed.piece("embedding_norm").steps == resumed.step == 2 * first.step


def test_unknown_sections_and_miners_are_named_with_suggestions(outside_method):
    with pytest.raises(RecipeError, match=r"unknown key 'embeding_norm'.*did you mean 'embedding_norm'"):
        load_recipe(None, ["embeding_norm.weight=1"])
    with pytest.raises(RecipeError, match=r"embedding_norm.target.*greater than 0"):
        load_recipe(None, ["embedding_norm.target=0"])
    with pytest.raises(RecipeError, match=r"unknown miner 'random_negativ'.*did you mean 'random_negative'"):
        load_recipe(None, ["loss.miner=random_negativ"])


def test_without_the_registration_the_section_is_an_error(tiny_data):
    """An unregistered (unimported) method's section cannot validate and then silently never run."""
    with pytest.raises(RecipeError, match="unknown key 'embedding_norm'"):
        load_recipe(None, ["embedding_norm.weight=0.05"])


def test_registration_rules(outside_method):
    with pytest.raises(ValueError, match="registered twice"):
        register_piece("embedding_norm", config=EmbeddingNormConfig)(lambda ctx: None)
    register_piece("train", config=EmbeddingNormConfig)(_build_embedding_norm)
    try:
        with pytest.raises(ValueError, match="named like a core one"):
            load_recipe(None, [])
    finally:
        sections.PIECES.unregister("train")
    with pytest.raises(ValueError, match="Python identifier"):
        register_piece("embedding-norm")


def test_entry_point_modules_are_imported_before_any_recipe(monkeypatch):
    """A package declares its method modules under the ``reidkit.methods`` entry-point group; reidkit imports them
    before it assembles the schema, and a broken one names itself."""
    imported = []

    class EntryPoint:
        name, value = "outside", "outside_pkg.methods"

        def load(self):
            imported.append(self.value)
            register_piece("outside_piece", config=EmbeddingNormConfig)(_build_embedding_norm)

    monkeypatch.setattr(sections, "entry_points", lambda group: [EntryPoint()] if group == "reidkit.methods" else [])
    try:
        assert load_recipe(None, ["outside_piece.weight=1"]).section("outside_piece").weight == 1
        assert imported == ["outside_pkg.methods"]
    finally:
        sections.PIECES.unregister("outside_piece")
        sections._loaded.discard("outside_pkg.methods")

    class Broken(EntryPoint):
        value = "broken_pkg.methods"

        def load(self):
            raise ModuleNotFoundError("No module named 'broken_pkg'")

    monkeypatch.setattr(sections, "entry_points", lambda group: [Broken()])
    with pytest.raises(ImportError, match=r"reidkit method 'outside' \(broken_pkg.methods.*No module named"):
        load_recipe(None, [])


def test_a_model_family_with_its_own_options_from_outside(tiny_data, tmp_path):
    """A model family registers its builder and its options model; the recipe's ``model`` section then takes and
    checks those options for that model only, records them whole, and passes the changed ones to the builder."""
    from reidkit.models import build_model
    from reidkit.models.registry import _MODELS, register_model

    class WidthOptions(BaseModel):
        model_config = ConfigDict(extra="forbid")
        width_multiplier: int = Field(1, ge=1, le=4)

    built = []

    def build(num_classes: int, pretrained: str | None = "none", last_stride: int = 1,
              width_multiplier: int = 1) -> nn.Module:
        built.append(width_multiplier)
        return build_model("resnet18_bnneck", num_classes, pretrained="none", last_stride=last_stride)

    register_model("wide_resnet18_test", options=WidthOptions)(build)
    try:
        recipe = load_recipe(None, [*tiny_overrides(tiny_data, tmp_path / "run", epochs=1),
                                    "model.name=wide_resnet18_test", "model.width_multiplier=3"])
        assert recipe.model.family_options() == {"width_multiplier": 3}
        assert recipe.model.options() == {"width_multiplier": 3}
        Trainer(recipe, progress=False)
        assert built[-1] == 3
        default = load_recipe(None, ["model.name=wide_resnet18_test"])
        assert default.model.family_options() == {"width_multiplier": 1} and default.model.options() == {}
        with pytest.raises(RecipeError, match=r"width_multiplier: Input should be less than or equal to 4"):
            load_recipe(None, ["model.name=wide_resnet18_test", "model.width_multiplier=9"])
        with pytest.raises(RecipeError, match=r"'resnet18_bnneck' takes no option width_multiplier"):
            load_recipe(None, ["model.name=resnet18_bnneck", "model.width_multiplier=2"])
    finally:
        _MODELS.unregister("wide_resnet18_test")


def test_recorded_recipes_of_the_former_shared_model_options_still_read():
    """Recipes recorded before the families owned their options held every option, at its default, for every
    model; they still validate (the unused ones dropped), while a real value for a model without it is an error."""
    from reidkit.config import recipe_schema
    old = recipe_schema()().model_dump(mode="json")
    old["model"] |= {"regions": 2, "region_dim": None, "reduction": "light", "cell_ratio": 4, "ptl_head": "bnneck"}
    assert recipe_schema().model_validate(old).model.family_options() == {}
    old["model"]["cell_ratio"] = 8
    with pytest.raises(ValueError, match="takes no option cell_ratio"):
        recipe_schema().model_validate(old)
