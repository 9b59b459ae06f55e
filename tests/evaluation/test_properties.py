"""Property-based checks (hypothesis): the evaluation core against the literal references on random small
problems, and recipe overrides that either apply or fail naming their key."""
import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="hypothesis is in the test extra (pip install -e '.[test]')")
from hypothesis import HealthCheck, assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from reference import literal_evaluate, literal_rerank  # noqa: E402
from reidkit.config import Recipe, RecipeError  # noqa: E402
from reidkit.evaluation import compute_distance, evaluate_rank  # noqa: E402
from reidkit.evaluation.rerank import re_ranking  # noqa: E402
from reidkit.recipe_files import load_recipe, parse_yaml, section_fields

# derandomize: CI runs the same examples every time (a failure reproduces; nothing is flaky)
PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
#: the strings pydantic reads as booleans (lax mode), e.g. data.skip_bad_images=off
PYDANTIC_BOOLS = {"1": True, "on": True, "t": True, "true": True, "y": True, "yes": True,
                  "0": False, "off": False, "f": False, "false": False, "n": False, "no": False}


@st.composite
def ranking_problems(draw):
    """Distances with ties, junk identities (-1), distractors (0), same-camera matches, queries without a match."""
    nq, ng = draw(st.integers(1, 8)), draw(st.integers(1, 30))
    ids = st.integers(-1, 4)
    q_pids = np.array(draw(st.lists(st.integers(1, 4), min_size=nq, max_size=nq)))
    g_pids = np.array(draw(st.lists(ids, min_size=ng, max_size=ng)))
    q_cams = np.array(draw(st.lists(st.integers(0, 2), min_size=nq, max_size=nq)))
    g_cams = np.array(draw(st.lists(st.integers(0, 2), min_size=ng, max_size=ng)))
    if draw(st.booleans()):                                          # heavy ties
        values = st.integers(0, 3).map(float)
    else:
        values = st.floats(0, 10, allow_nan=False, width=32)
    dist = np.array(draw(st.lists(values, min_size=nq * ng, max_size=nq * ng)), dtype=np.float32).reshape(nq, ng)
    return dist, q_pids, g_pids, q_cams, g_cams, draw(st.integers(1, 12))


@pytest.mark.filterwarnings("ignore:gallery has only")
@pytest.mark.filterwarnings("ignore::reidkit.evaluation.metrics.CollapsedEmbeddingsWarning")   # all-tied draws
@PROPERTY
@given(ranking_problems())
def test_evaluate_rank_equals_the_literal_protocol(problem):
    dist, qp, gp, qc, gc, max_rank = problem
    ref = literal_evaluate(dist, qp, gp, qc, gc, max_rank)
    if ref is None:                                  # no query has a match in another camera
        with pytest.raises(ValueError, match="no query has a valid match"):
            evaluate_rank(dist, qp, gp, qc, gc, max_rank=max_rank)
        return
    got = evaluate_rank(dist, qp, gp, qc, gc, max_rank=max_rank)
    mAP, cmc, mINP, num_valid, _ = ref
    assert got.mAP == pytest.approx(mAP, abs=1e-6)
    np.testing.assert_allclose(got.cmc, cmc, atol=1e-6)
    assert got.mINP == pytest.approx(mINP, abs=1e-6)
    assert got.num_valid_queries == num_valid
    assert all(a <= b + 1e-12 for a, b in zip(got.cmc, got.cmc[1:]))          # a CMC never falls


@st.composite
def rerank_problems(draw):
    nq, ng, dim = draw(st.integers(2, 10)), draw(st.integers(4, 24)), draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((4, dim))
    qf = (centers[rng.integers(0, 4, nq)] + 0.5 * rng.standard_normal((nq, dim))).astype(np.float32)
    gf = (centers[rng.integers(0, 4, ng)] + 0.5 * rng.standard_normal((ng, dim))).astype(np.float32)
    n = nq + ng
    k1 = draw(st.integers(1, min(12, n - 1)))
    k2 = draw(st.integers(1, min(4, n)))
    lam = draw(st.sampled_from([0.0, 0.3, 0.5, 1.0]))
    return qf, gf, draw(st.sampled_from(["euclidean", "cosine"])), k1, k2, lam


@PROPERTY
@given(rerank_problems())
def test_re_ranking_equals_the_dense_reference(problem):
    qf, gf, metric, k1, k2, lam = problem
    qg, qq, gg = (compute_distance(a, b, metric).numpy() for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    assume(float((np.block([[qq, qg], [qg.T, gg]]) ** 2).max(axis=0).min()) > 1e-6)   # a column of zeros: 0/0
    np.testing.assert_allclose(re_ranking(qg, qq, gg, k1, k2, lam), literal_rerank(qg, qq, gg, k1, k2, lam),
                               atol=1e-5)


def _leaf_keys(section=Recipe, prefix: str = "") -> list[str]:
    keys = []
    for name, field in section_fields(section).items():
        if section_fields(field.annotation):
            keys += _leaf_keys(field.annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


LEAVES = _leaf_keys()
keys = st.one_of(st.sampled_from(LEAVES),
                 st.sampled_from(LEAVES).map(lambda k: k[:-1] + "x"),                 # misspelt
                 st.sampled_from(["train", "data", "loss", "zzz"]).map(lambda s: s + ".nope"))
values = st.one_of(st.integers(-3, 500).map(str), st.floats(-2, 2, allow_nan=False).map(repr),
                   st.sampled_from(["true", "false", "null", "off", "cosine", "sgd", "[1, 2]", "abc", "''",
                                    "cuda:1", "bf16", "random", "{a: 1}"]))


def _lookup(recipe: Recipe, key: str):
    node = recipe
    for part in key.split("."):
        node = getattr(node, part)
    return node


@settings(max_examples=300, deadline=None, derandomize=True)
@given(keys, values)
@example("data.skip_bad_images", "off")                    # found by this test: pydantic reads it as False
def test_a_dotted_override_applies_or_fails_naming_its_key(key, raw):
    try:
        recipe = load_recipe(None, [f"{key}={raw}"])
    except RecipeError as e:
        message = str(e)
        leaf = key.split(".")[-1]
        # the key itself, or (a cross-field rule such as P x K batches) the leaf named in the rule
        assert key in message or f"{leaf}=" in message or f"{key.rsplit('.', 1)[0]}" in message, message
        return
    assert key in LEAVES, f"{key}={raw} was accepted although no such key exists"
    parsed, got = parse_yaml(raw), _lookup(recipe, key)
    if key == "train.amp" and isinstance(parsed, bool):
        parsed = "bf16" if parsed else "off"
    if key == "data.sampler" and parsed == "auto":
        return                                       # resolved to the sampler the losses need
    if isinstance(got, tuple):
        got = list(got)
    if isinstance(got, bool) and isinstance(parsed, str):
        parsed = PYDANTIC_BOOLS[parsed.lower()]                # a KeyError: a string became a bool unexpectedly
    if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) and isinstance(got, (int, float)):
        assert float(got) == pytest.approx(float(parsed))
    else:
        assert got == parsed
