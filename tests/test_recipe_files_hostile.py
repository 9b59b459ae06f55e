"""Recipe files as a hostile user writes them (issue 39): random nested YAML is a valid recipe or a RecipeError,
never a traceback; duplicate keys, alias bombs, deep _base_ chains, recipes that name no dataset or model, and
out-of-range values are refused by name."""
import pytest
import yaml

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from reidkit.config import Recipe, RecipeError  # noqa: E402
from reidkit.recipe_files import MAX_RECIPE_VALUES, load_recipe, section_fields  # noqa: E402

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture],
                    derandomize=True)

SECTIONS = list(section_fields(Recipe))
KEYS = sorted({k for s in SECTIONS for k in section_fields(section_fields(Recipe)[s].annotation)} | set(SECTIONS)
              | {"_base_", "dataset", "name", "camera_bias", "k", "epohcs", "", "1", "null"})
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["synthetic", "resnet18_bnneck", "osnet_x0_25", "auto",
                                                           "cuda:0", "off", "1e-3", "[1, 2]", "market1501"]))
keys = st.one_of(st.sampled_from(KEYS), st.integers(-3, 3), st.booleans())
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=5)), max_leaves=25)
recipes = st.dictionaries(st.sampled_from(SECTIONS + ["_base_", "extra"]), trees, max_size=5)


def load_outcome(tmp_path, text: str) -> Recipe | RecipeError:
    """The recipe ``text`` loads as, or the RecipeError it raises; any other exception propagates (and fails)."""
    path = tmp_path / "r.yaml"
    path.write_text(text)
    try:
        return load_recipe(path)
    except RecipeError as e:
        return e


def is_clean(outcome) -> bool:
    """A valid recipe, or a RecipeError with a message."""
    return isinstance(outcome, Recipe) or (isinstance(outcome, RecipeError) and bool(str(outcome).strip()))


@PROPERTY
@given(recipes)
@example({"data": {}, "model": {}})
@example({"data": {"dataset": ["synthetic", 1]}, "model": {"name": "resnet18_bnneck"}})
@example({"data": {"dataset": "synthetic", "root": [1, 2]}, "model": {"name": "resnet18_bnneck"}})
@example({"data": {"dataset": "synthetic", "options": [[]]}, "model": {"name": None}})
@example({"_base_": ["a", "b"]})
@example({"data": {"dataset": {"a": 1}}, "model": {"name": "resnet18_bnneck"}})
@example({"eval": {"datasets": [1, None, {"dataset": 3}]}, "data": {"dataset": "synthetic"}, "model": {"name": "x"}})
def test_random_nested_yaml_is_a_recipe_or_a_recipe_error(tmp_path, tree):
    outcome = load_outcome(tmp_path, yaml.safe_dump(tree, allow_unicode=True))
    assert is_clean(outcome), outcome


@PROPERTY
@given(st.text(max_size=200))
@example("data: &a [1]\nmodel: *b\n")
@example("data: {dataset: synthetic}\n  model: x")
@example("? [a, b]\n: 1\n")
@example("!!python/object/apply:os.system ['echo hacked']\n")
@example("data: !!binary aGVsbG8=\n")
@example("\t\x00")
@example(NAMED_TEXT := "data: {dataset: synthetic}\nmodel: {name: resnet18_bnneck}\n")
@example(NAMED_TEXT + "train: {open_layers: " + "[" * 3000 + "]" * 3000 + "}\n")        # RecursionError before
@example("data: {dataset: synthetic, options: " + "{a: " * 1500 + "1" + "}" * 1500 + "}\n")  # RecursionError before
def test_random_text_is_a_recipe_or_a_recipe_error(tmp_path, text):
    outcome = load_outcome(tmp_path, text)
    assert is_clean(outcome), outcome


NAMED = "data: {dataset: synthetic}\nmodel: {name: resnet18_bnneck}\n"


def test_empty_sections_must_name_the_dataset_and_model(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("data: {}\nmodel: {}\ntrain: {epochs: 1}\n")
    with pytest.raises(RecipeError, match="does not name data.dataset and model.name"):
        load_recipe(path)
    assert load_recipe(path, ["data.dataset=synthetic", "model.name=resnet18_bnneck"]).model.name == "resnet18_bnneck"
    assert load_recipe(None).data.dataset == "synthetic"      # the Python defaults stay for the API


def test_a_key_given_twice_names_both_lines(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(NAMED + "train:\n  epochs: 5\noptim: {lr: 0.1}\ntrain:\n  seed: 3\n")
    with pytest.raises(RecipeError, match=r"r.yaml: the key 'train' is given twice, at lines 3 and 6"):
        load_recipe(path)
    path.write_text(NAMED + "train: {epochs: 5, epochs: 6}\n")
    with pytest.raises(RecipeError, match="'epochs' is given twice, at lines 3 and 3"):
        load_recipe(path)


def test_alias_bombs_and_self_references_are_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("x:\n" + "\n".join("  " + line for line in lines) + "\n" + NAMED + "train:\n  open_layers: *a8\n")
    with pytest.raises(RecipeError, match=f"bomb.yaml: the recipe expands to over {MAX_RECIPE_VALUES} values"):
        load_recipe(path)
    nested = ", ".join(["&a0 [x, x, x, x, x, x, x, x, x, x]"] +
                       [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)])
    with pytest.raises(RecipeError, match="override 'train.open_layers=.*expands to over"):   # an override too
        load_recipe(None, [f"train.open_layers=[{nested}]"])
    path.write_text(NAMED + "train:\n  open_layers: &me [classifier, *me]\n")
    with pytest.raises(RecipeError, match="refers to itself|not valid YAML"):
        load_recipe(path)
    path.write_text(NAMED + "train: {open_layers: " + "[" * 200 + "]" * 200 + "}\n")
    with pytest.raises(RecipeError, match="nested"):
        load_recipe(path)


def test_a_deep_base_chain_is_refused_without_recursion(tmp_path):
    (tmp_path / "r0.yaml").write_text(NAMED)
    for i in range(1, 3000):
        (tmp_path / f"r{i}.yaml").write_text(f"_base_: r{i - 1}.yaml\n")
    with pytest.raises(RecipeError, match="_base_ chain is over 32 recipes deep"):
        load_recipe(tmp_path / "r2999.yaml")
    assert load_recipe(tmp_path / "r20.yaml").model.name == "resnet18_bnneck"


def test_a_recipe_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(NAMED.encode() + b"# caf\xe9\n")
    with pytest.raises(RecipeError, match=rf"r.yaml: not UTF-8 text \(byte {len(NAMED) + 5}"):
        load_recipe(path)


@pytest.mark.parametrize("override, key", [
    ("data.height=100000", "data.height"), ("data.width=4", "data.width"),
    ("data.height=2048", "height x width"), ("train.seed=-1", "train.seed"), ("data.batch_size=1", "data.batch_size"),
    ("loss.triplet_margin=-0.3", "loss.triplet_margin")])
def test_out_of_range_values_name_their_key(override, key):
    extra = ["data.width=2048"] if key == "height x width" else []
    with pytest.raises(RecipeError, match=key):
        load_recipe(None, [override, *extra])


def test_soft_margin_and_zero_margin_stay_valid():
    assert load_recipe(None, ["loss.triplet_margin=null"]).loss.triplet_margin is None
    assert load_recipe(None, ["loss.triplet_margin=0"]).loss.triplet_margin == 0
