"""Deep mutual learning (Zhang et al., "Deep Mutual Learning", CVPR 2018), as the OSNet paper's appendix
trains its models (Zhou et al., "Learning Generalisable Omni-Scale Representations for Person
Re-Identification", Appendix): two or more peers learn together from scratch, each with the recipe's
objective plus the KL divergence from every other peer's softened predictions to its own::

    L_k = L_objective(peer k) + weight * mean_{j != k} T^2 KL(p_j^T || p_k^T),   p^T = softmax(logits / T)

The other peers' predictions are constants in ``L_k`` (each peer learns from the others, not the reverse).
The recipe's model is peer 0; ``mutual.peers`` names the others (any registered architectures: their
embeddings need not match, only the identities).  All peers see the same augmented batch and share the
recipe's optimiser settings and schedule.  After training each other peer is saved beside the run as a
self-describing checkpoint (``peer_K_ARCH.pth``), so ``reidkit eval RECIPE --weights best.pth --weights
peer_1_ARCH.pth`` evaluates each and their ensemble.  Every piece that sets a model's modes (fixbase epochs,
BatchNorm freezing, precise BN) applies to every peer too (:meth:`MutualLearningPiece.models`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn as nn
from pydantic import Field

from ..config import Strict
from ..engine.checkpoint import EmbeddingSpec, save_checkpoint
from ..engine.optim import model_parameter_groups
from ..losses.mutual import mutual_kl
from ..losses.objective import ReIDObjective
from ..models import build_model
from ..numerics import place_model
from ..pieces import PieceContext, StepOutputs, TrainingPiece, branch_outputs, register_piece

log = logging.getLogger("reidkit")


class MutualConfig(Strict):
    """The recipe section ``mutual``: the recipe's model and these peers learn together, each with the objective
    plus ``weight * T^2 * KL`` to the others' softened predictions."""

    peers: list[str] = Field(default_factory=list)    # the other peers' model names; [] = off
    weight: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    pretrained: str | None = None     # the peers' initialisation (auto, none, imagenet, a file); None: model.pretrained


class MutualLearningPiece(TrainingPiece):
    """The other peers, trained beside the recipe's model (peer 0) on the same batches.

    ``extra_loss`` gives ``mutual`` (peer 0's KL term, weighted) and ``mutual_peers`` (each other peer's whole loss:
    the objective on its own logits and embeddings plus its weighted KL term); the peers' parameters are
    groups of the main optimiser, so the recipe's schedule drives them too."""

    def __init__(self, peers: list[nn.Module], names: list[str], objective: ReIDObjective, weight: float,
                 temperature: float, parameter_groups: list[dict], image_size: tuple[int, int]):
        self.peers, self.names, self.objective = peers, names, objective
        self.weight, self.temperature = float(weight), float(temperature)
        self._groups, self.image_size = parameter_groups, image_size
        self._last: dict[str, torch.Tensor] = {}

    def parameter_groups(self) -> list[dict]:
        return self._groups

    def to(self, device: torch.device) -> MutualLearningPiece:
        for peer in self.peers:
            peer.to(device)
        return self

    def models(self) -> list[nn.Module]:
        return list(self.peers)

    def extra_loss(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        outputs = [branch_outputs(peer(out.inputs)) for peer in self.peers]
        first_logits = [out.logits[0]] + [logits[0] for logits, _ in outputs]   # the global branch of each
        kl = mutual_kl(first_logits, self.temperature)
        peers_total = out.logits[0].new_zeros((), dtype=torch.float32)
        for (logits, features), kl_k in zip(outputs, kl[1:]):
            with self.objective.miner.unrecorded():                          # diagnostics: peer 0's mining
                terms = self.objective(logits, features, out.pids, out.camids)
            peers_total = peers_total + sum(terms.values()) + self.weight * kl_k
        with torch.no_grad():
            agree = [(lg[0].argmax(1) == out.logits[0].argmax(1)).float().mean() for lg, _ in outputs]
            self._last = {"kl": kl[0].detach(), "peer_loss": peers_total.detach() / len(self.peers),
                          "agreement": torch.stack(agree).mean()}
        return {"mutual": self.weight * kl[0], "mutual_peers": peers_total}

    def diagnostics(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._last.items()}

    def panel(self) -> dict:
        return {"title": f"mutual learning ({len(self.peers) + 1} peers)", "ylabel": "KL / loss",
                "right": ["agreement"], "right_label": "top-1 agreement with peer 0"}

    def state_dict(self) -> dict:
        return {"peers": [peer.state_dict() for peer in self.peers]}

    def load_state_dict(self, state: dict) -> None:
        for peer, saved in zip(self.peers, state["peers"], strict=True):
            peer.load_state_dict(saved)

    def write_outputs(self, out_dir: Path) -> list[Path]:
        paths = []
        for k, (peer, arch) in enumerate(zip(self.peers, self.names), start=1):
            path = Path(out_dir) / f"peer_{k}_{arch.replace('/', '-')}.pth"      # timm/x: peer_1_timm-x.pth
            save_checkpoint({"state_dict": peer.state_dict(),
                             "embedding": EmbeddingSpec(arch, {}, self.image_size).as_dict()}, path)
            paths.append(path)
        log.info("mutual learning: the other peers saved as %s", ", ".join(p.name for p in paths))
        return paths


@register_piece("mutual", config=MutualConfig)
def _mutual(ctx: PieceContext[MutualConfig]) -> MutualLearningPiece | None:
    """Deep mutual learning (Zhang et al. 2018), on when ``mutual.peers`` names other models."""
    cfg = ctx.config
    if not cfg.peers:
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise ValueError("mutual (deep mutual learning) trains its peers in one process: run it without "
                         "torchrun, or leave mutual.peers empty")
    if ctx.objective is None:
        raise ValueError("mutual learning needs the trainer's objective (PieceContext.objective)")
    r = ctx.recipe
    peers, groups = [], []
    for k, arch in enumerate(cfg.peers, start=1):
        peer = build_model(arch, ctx.num_classes, pretrained=cfg.pretrained or r.model.pretrained or "none")
        peers.append(place_model(peer, ctx.device, ctx.memory_format))
        groups += model_parameter_groups(peer, r.optim, prefix=f"peer {k} ")
    log.info("deep mutual learning: %s with %s (weight %g, temperature %g)", r.model.name, ", ".join(cfg.peers),
             cfg.weight, cfg.temperature)
    return MutualLearningPiece(peers, list(cfg.peers), ctx.objective, cfg.weight, cfg.temperature, groups,
                               (r.data.height, r.data.width))
