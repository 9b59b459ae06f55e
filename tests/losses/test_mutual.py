"""Deep mutual learning: the KL terms against a hand computation, their gradients, and a run with a peer."""
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides
from reidkit.engine import Trainer
from reidkit.engine.checkpoint import load_checkpoint, load_embedding_model
from reidkit.losses import mutual_kl
from reidkit.recipe_files import load_recipe


def kl_by_hand(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """mean over rows of sum_c p_c (log p_c - log q_c)."""
    return (p * (p.log() - q.log())).sum(1).mean()


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_each_peer_learns_the_mean_kl_from_the_others(temperature):
    torch.manual_seed(0)
    logits = [torch.randn(5, 7, dtype=torch.float64) for _ in range(3)]
    soft = [F.softmax(x / temperature, 1) for x in logits]
    terms = mutual_kl(logits, temperature)
    for k in range(3):
        expected = temperature ** 2 * torch.stack([kl_by_hand(soft[j], soft[k]) for j in range(3) if j != k]).mean()
        assert terms[k].item() == pytest.approx(expected.item(), rel=1e-10)
    with pytest.raises(ValueError, match="two peers"):
        mutual_kl(logits[:1])


def test_the_kl_term_trains_its_own_peer_only():
    """d KL(p1 || p0) / d logits0 = (p0 - p1) / B at T = 1; peer 1's logits get no gradient from peer 0's term."""
    torch.manual_seed(1)
    a, b = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    term0, _ = mutual_kl([a, b])
    term0.backward()
    torch.testing.assert_close(a.grad, (F.softmax(a, 1) - F.softmax(b, 1)).detach() / 4)
    assert b.grad is None


@pytest.mark.slow
def test_a_run_with_a_peer_trains_both_and_saves_the_peer(tiny_data, tmp_path):
    out = tmp_path / "dml"
    recipe = load_recipe(None, [*tiny_overrides(tiny_data, out, epochs=2), "mutual.peers=[osnet_x0_25]",
                                "center_loss.weight=0"])
    trainer = Trainer(recipe, progress=False)
    piece = trainer.piece("mutual")
    assert piece is not None and len(piece.peers) == 1
    peer = piece.peers[0]
    before = {k: v.clone() for k, v in peer.state_dict().items()}
    names = [g.get("name") for g in trainer.optimizer.param_groups]
    assert "peer 1 weights" in names and "peer 1 biases" in names      # one optimiser, one schedule for all
    trainer.fit()
    groups = {g.get("name"): g["lr"] for g in trainer.optimizer.param_groups}
    assert groups["peer 1 weights"] == pytest.approx(groups["weights"])
    changed = [k for k, v in peer.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert len(changed) > 0.9 * sum(v.dtype.is_floating_point for v in before.values())
    h = trainer.history
    assert len(h["loss/mutual"]) == len(h["loss/mutual_peers"]) == 2 and all(v > 0 for v in h["loss/mutual"])
    assert 0 <= h["mutual/agreement"][-1] <= 1
    # the peer is a self-describing checkpoint: it embeds exactly as the trained peer
    model, spec = load_embedding_model(out / "peer_1_osnet_x0_25.pth")
    assert spec is not None and spec.arch == "osnet_x0_25" and tuple(spec.image_size) == (32, 16)
    x = torch.randn(3, 3, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), peer.eval()(x))
    # and last.pth carries it, so a resumed run continues both peers
    assert set(load_checkpoint(out / "last.pth")["pieces"]["mutual"]["peers"][0]) == set(before)


def test_the_fixbase_epochs_apply_to_every_peer():
    """With train.fixbase_epochs, a peer trains only the open layers first, as the recipe's own model does."""
    from reidkit.losses.objective import ReIDObjective
    from reidkit.models import build_model
    from reidkit.pieces import PieceContext, build_pieces

    def pieces_and_models(overrides: list[str]):
        recipe = load_recipe(None, ["model.name=resnet18_bnneck", "model.pretrained=none", *overrides])
        model = build_model("resnet18_bnneck", 5, pretrained="none")
        pieces = build_pieces(PieceContext(recipe, None, model, 5, model.feature_dim, torch.device("cpu"),
                                           ReIDObjective(recipe.loss)))
        models = [model] + [m for p in pieces for m in p.models()]
        for p in pieces:                                  # as the Trainer does once its pieces are built
            p.setup(models)
        return pieces, models

    pieces, models = pieces_and_models(["train.fixbase_epochs=1", "train.open_layers=[classifier]",
                                        "mutual.peers=[osnet_x0_25]"])
    assert [p.name for p in pieces][:1] == ["fixbase"] and len(models) == 2
    peer = models[1]
    for p in pieces:
        p.on_epoch_start(models, 0)
    trained = {n for n, p in peer.named_parameters() if p.requires_grad}
    assert trained and all("classifier" in n for n in trained)
    for p in pieces:
        p.on_epoch_start(models, 1)
    assert all(p.requires_grad for p in peer.parameters())
    with pytest.raises(ValueError, match="no module named 'head_fc'"):
        pieces_and_models(["train.fixbase_epochs=1", "train.open_layers=[head_fc]", "mutual.peers=[osnet_x0_25]"])


def test_the_camera_miner_diagnostics_describe_the_recipe_model_alone():
    """The peers mine with the recipe's camera-aware miner (same schedule) but leave its statistics alone."""
    from reidkit.config import LossConfig
    from reidkit.losses import CameraAwareBatchHardMiner
    from reidkit.losses.objective import ReIDObjective
    from reidkit.methods.camera_aware import CameraAwarePiece
    from reidkit.methods.mutual import MutualLearningPiece
    from reidkit.pieces import StepOutputs
    g = torch.Generator().manual_seed(3)
    pids, camids = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 1, 0, 1, 1, 0])
    mine = torch.randn(6, 4, generator=g)
    peer_features = mine.flip(0) * torch.tensor([1.0, 3.0, 0.1, 2.0])      # another geometry: other choices

    class Peer(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(6, 3), peer_features

    objective = ReIDObjective(LossConfig(miner="camera_aware"), CameraAwareBatchHardMiner())
    mining = CameraAwarePiece(objective.miner)
    objective(torch.zeros(6, 3), peer_features, pids, camids)
    peer_alone = mining.diagnostics()
    objective(torch.zeros(6, 3), mine, pids, camids)
    model_alone = mining.diagnostics()
    assert peer_alone != model_alone
    piece = MutualLearningPiece([Peer()], ["peer"], objective, 1.0, 1.0, [], (4, 2))
    objective(torch.zeros(6, 3), mine, pids, camids)                     # the recipe's model's step ...
    piece.extra_loss(StepOutputs(torch.zeros(6, 3, 4, 2), [torch.zeros(6, 3)], [mine], [mine], pids, camids, 0, 0))
    assert mining.diagnostics() == model_alone                            # ... and only its mining is reported
