"""Deep mutual learning (Zhang et al., "Deep Mutual Learning", CVPR 2018), as the OSNet paper's appendix
trains its models (Zhou et al., "Learning Generalisable Omni-Scale Representations for Person
Re-Identification", Appendix): two or more peers learn together from scratch, each with the recipe's
objective plus the KL divergence from every other peer's softened predictions to its own::

    L_k = L_objective(peer k) + weight * mean_{j != k} T^2 KL(p_j^T || p_k^T),   p^T = softmax(logits / T)

The other peers' predictions are constants in ``L_k`` (each peer learns from the others, not the reverse).
The recipe's model is peer 0; ``loss.mutual.peers`` names the others (any registered architectures: their
embeddings need not match, only the identities).  All peers see the same augmented batch and share the
recipe's optimiser settings and schedule.  After training each other peer is saved beside the run as a
self-describing checkpoint (``peer_K_ARCH.pth``), so ``reidkit eval RECIPE --weights best.pth --weights
peer_1_ARCH.pth`` evaluates each and their ensemble.  The recipe's fixbase epochs (``train.fixbase_epochs``,
``train.open_layers``) apply to every peer.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..numerics import exact_cpu_batchnorm, full_precision
from ..pieces import PieceContext, StepOutputs, TrainingPiece, branch_outputs, register_piece

log = logging.getLogger("reidkit")


def mutual_kl(logits: Sequence[torch.Tensor], temperature: float = 1.0) -> list[torch.Tensor]:
    """For each peer ``k``: ``mean_{j != k} T^2 KL(p_j || p_k)`` over the batch, with the other peers' ``p_j``
    detached (the term trains peer ``k`` only)."""
    if len(logits) < 2:
        raise ValueError("mutual learning needs at least two peers")
    log_p = [F.log_softmax(full_precision(x) / temperature, dim=1) for x in logits]
    terms = []
    for k, mine in enumerate(log_p):
        kls = [F.kl_div(mine, theirs.detach(), reduction="batchmean", log_target=True)
               for j, theirs in enumerate(log_p) if j != k]
        terms.append(temperature ** 2 * torch.stack(kls).mean())
    return terms


class MutualLearningPiece(TrainingPiece):
    """The other peers, trained beside the recipe's model (peer 0) on the same batches.

    ``extra_loss`` gives ``mutual`` (peer 0's KL term, weighted) and ``peers`` (each other peer's whole loss:
    the objective on its own logits and embeddings plus its weighted KL term); the peers' parameters are
    groups of the main optimiser, so the recipe's schedule drives them too."""

    def __init__(self, peers: list[nn.Module], names: list[str], objective: nn.Module, weight: float,
                 temperature: float, parameter_groups: list[dict], image_size: tuple[int, int],
                 set_modes: Callable[[nn.Module, int], None] | None = None):
        self.peers, self.names, self.objective = peers, names, objective
        self.weight, self.temperature = float(weight), float(temperature)
        self._groups, self.image_size = parameter_groups, image_size
        self.set_modes = set_modes          # (peer, epoch): the recipe's fixbase epochs, as for peer 0
        self._last: dict[str, torch.Tensor] = {}

    def parameter_groups(self) -> list[dict]:
        return self._groups

    def to(self, device: torch.device) -> MutualLearningPiece:
        for peer in self.peers:
            peer.to(device)
        return self

    def on_epoch_start(self, model: nn.Module, epoch: int) -> None:
        for peer in self.peers:
            if self.set_modes is not None:
                self.set_modes(peer, epoch)
            else:
                peer.train()

    def extra_loss(self, out: StepOutputs) -> dict[str, torch.Tensor]:
        outputs = [branch_outputs(peer(out.inputs)) for peer in self.peers]
        first_logits = [out.logits[0]] + [logits[0] for logits, _ in outputs]   # the global branch of each
        kl = mutual_kl(first_logits, self.temperature)
        peers_total = out.logits[0].new_zeros((), dtype=torch.float32)
        miner = getattr(self.objective, "miner", None)
        for (logits, features), kl_k in zip(outputs, kl[1:]):
            with miner.unrecorded() if miner is not None else nullcontext():    # diagnostics: peer 0's mining
                terms = self.objective(logits, features, out.pids, out.camids)
            peers_total = peers_total + sum(terms.values()) + self.weight * kl_k
        with torch.no_grad():
            agree = [(lg[0].argmax(1) == out.logits[0].argmax(1)).float().mean() for lg, _ in outputs]
            self._last = {"kl": kl[0].detach(), "peer_loss": peers_total.detach() / len(self.peers),
                          "agreement": torch.stack(agree).mean()}
        return {"mutual": self.weight * kl[0], "peers": peers_total}

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
        from ..engine.checkpoint import EmbeddingSpec, save_checkpoint
        paths = []
        for k, (peer, arch) in enumerate(zip(self.peers, self.names), start=1):
            path = Path(out_dir) / f"peer_{k}_{arch}.pth"
            save_checkpoint({"state_dict": peer.state_dict(),
                             "embedding": EmbeddingSpec(arch, {}, self.image_size).as_dict()}, path)
            paths.append(path)
        log.info("mutual learning: the other peers saved as %s", ", ".join(p.name for p in paths))
        return paths


@register_piece("mutual")
def _mutual(ctx: PieceContext) -> MutualLearningPiece | None:
    cfg = ctx.recipe.loss.mutual
    if not cfg.peers:
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise ValueError("loss.mutual (deep mutual learning) trains its peers in one process: run it without "
                         "torchrun, or leave loss.mutual.peers empty")
    if ctx.objective is None:
        raise ValueError("mutual learning needs the trainer's objective (PieceContext.objective)")
    from ..engine.freeze import find_modules, open_all_layers, open_layers
    from ..engine.optim import model_parameter_groups
    from ..models import build_model
    r, t = ctx.recipe, ctx.recipe.train
    peers, groups, trainable = [], [], {}
    for k, arch in enumerate(cfg.peers, start=1):
        peer = build_model(arch, ctx.num_classes, pretrained=cfg.pretrained or r.model.pretrained or "none")
        peers.append(exact_cpu_batchnorm(peer.to(ctx.device).to(memory_format=ctx.memory_format), ctx.device,
                                         ctx.memory_format))
        groups += model_parameter_groups(peer, r.optim, prefix=f"peer {k} ")
        trainable[id(peer)] = {p for p in peer.parameters() if p.requires_grad}
        if t.fixbase_epochs:
            find_modules(peer, t.open_layers)               # fail now on a name the peer lacks

    def set_modes(peer: nn.Module, epoch: int) -> None:
        if epoch < t.fixbase_epochs:
            open_layers(peer, t.open_layers)
        else:
            open_all_layers(peer, trainable[id(peer)])

    log.info("deep mutual learning: %s with %s (weight %g, temperature %g)", r.model.name, ", ".join(cfg.peers),
             cfg.weight, cfg.temperature)
    return MutualLearningPiece(peers, list(cfg.peers), ctx.objective, cfg.weight, cfg.temperature, groups,
                               (r.data.height, r.data.width), set_modes)
