import numpy as np
import torch
import torch.nn.functional as F

from reidkit.evaluation.expansion import database_augment, query_expand


def literal(rows, gallery, k, alpha, include_self):
    rows, gallery = F.normalize(rows, dim=1).numpy(), F.normalize(gallery, dim=1).numpy()
    out = []
    for r in rows:
        sims = gallery @ r
        top = np.argsort(-sims, kind="stable")[:k]
        mixed = sum(max(sims[j], 0) ** alpha * gallery[j] for j in top)
        v = mixed if include_self else r + mixed
        out.append(v / np.linalg.norm(v))
    return np.array(out)


def test_query_expansion_and_dba_equal_their_definitions():
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(7, 5, generator=gen), torch.randn(40, 5, generator=gen)
    np.testing.assert_allclose(query_expand(q, g, 3, 3.0).numpy(), literal(q, g, 3, 3.0, False), atol=1e-5)
    np.testing.assert_allclose(database_augment(g, 4, 2.0).numpy(), literal(g, g, 4, 2.0, True), atol=1e-5)
    assert torch.equal(query_expand(q, g, 0), q) and torch.equal(database_augment(g, 1), g)    # off


def test_expansion_pulls_a_query_towards_its_identity():
    gen = torch.Generator().manual_seed(1)
    centres = F.normalize(torch.randn(5, 16, generator=gen), dim=1)
    g = F.normalize(centres.repeat_interleave(4, 0) + 0.3 * torch.randn(20, 16, generator=gen), dim=1)
    q = F.normalize(centres + 0.6 * torch.randn(5, 16, generator=gen), dim=1)
    before = (q * centres).sum(1)
    after = (query_expand(q, g, 3) * centres).sum(1)
    assert (after > before).float().mean() >= 0.8
