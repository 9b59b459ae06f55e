"""The deep-mutual-learning term (Zhang et al., "Deep Mutual Learning", CVPR 2018): each peer's KL divergence
from the others' softened predictions; :mod:`reidkit.methods.mutual` trains the peers with it."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..numerics import full_precision


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
