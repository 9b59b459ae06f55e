import pytest
import torch
import torch.nn.functional as F

from reidkit.evaluation.ensemble import concatenate_members


def test_the_ensemble_cosine_is_the_mean_of_the_members():
    torch.manual_seed(0)
    members = [(torch.randn(5, 8) * 3, torch.randn(7, 8)), (torch.randn(5, 16), torch.randn(7, 16) * 0.1)]
    q, g = concatenate_members(members)
    assert q.shape == (5, 24) and g.shape == (7, 24)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(5))
    mean_cosine = sum(F.normalize(mq, dim=1) @ F.normalize(mg, dim=1).T for mq, mg in members) / 2
    torch.testing.assert_close(q @ g.T, mean_cosine)


def test_members_must_embed_the_same_images():
    with pytest.raises(ValueError, match="different numbers of images"):
        concatenate_members([(torch.randn(5, 4), torch.randn(7, 4)), (torch.randn(4, 4), torch.randn(7, 4))])
    with pytest.raises(ValueError, match="at least one"):
        concatenate_members([])
