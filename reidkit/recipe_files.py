"""Recipe files: YAML with ``_base_`` inheritance, dotted command-line overrides, the recipes shipped with
reidkit, and loading into the schema of :mod:`reidkit.config` with errors that name the key and the file."""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .config import Recipe, RecipeError, move_renamed_keys, moved_key, recipe_schema
from .names import did_you_mean

log = logging.getLogger("reidkit")


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid recipe ({source}):"]
    for e in error.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):   # models / dataclass sections
            lines.append(f"  unknown key '{key}'{did_you_mean(str(e['loc'][-1]), _keys_beside(e['loc']))}")
        elif isinstance(e.get("input"), dict):          # a whole section: the message names the keys
            lines.append(f"  {key + ': ' if key else ''}{msg}")
        else:
            lines.append(f"  {key}: {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def _keys_beside(loc: tuple) -> list[str]:
    """The keys the recipe section holding ``loc`` (e.g. ``("train", "epohcs")``) accepts."""
    fields = section_fields(recipe_schema())
    for part in loc[:-1]:
        field = fields.get(str(part))
        inner = getattr(field, "annotation", None) if field is not None else None
        if not section_fields(inner):
            return []
        fields = section_fields(inner)
    return list(fields)


def section_fields(section: Any) -> dict:
    """The fields of a recipe section (a pydantic model or pydantic dataclass); empty for a plain value."""
    if isinstance(section, type) and issubclass(section, BaseModel):
        return dict(section.model_fields)
    return dict(getattr(section, "__pydantic_fields__", {}) or {})


class _RecipeLoader(yaml.SafeLoader):
    """YAML 1.2 scalars: only true/false are booleans, so ``schedule: off`` stays the string 'off'."""


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                    list("tTfF"))
# and 1e-3 is a float (YAML 1.1 wants a dot: 1.0e-3)
_RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                    re.compile(r"^[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _construct_mapping(loader: _RecipeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A YAML mapping, refusing a key given twice (YAML would silently keep the last one)."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            raise RecipeError(f"line {key_node.start_mark.line + 1}: a key must be a name, got {key!r}") from None
        if first is not None:
            raise RecipeError(f"the key {key!r} is given twice, at lines {first} and {key_node.start_mark.line + 1} "
                              "(YAML would keep only the last): merge the two")
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_RecipeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

#: bounds on what a recipe may expand to: its text, its values once YAML aliases are expanded, its nesting
MAX_RECIPE_BYTES, MAX_RECIPE_VALUES, MAX_RECIPE_DEPTH = 1 << 20, 100_000, 32
#: how many recipes a _base_ chain may stack
MAX_BASE_DEPTH = 32


def parse_yaml(text: str):
    """YAML text -> Python values (recipe rules: YAML 1.2 booleans, no duplicate keys, bounded size)."""
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{len(text)} characters of YAML, over the {MAX_RECIPE_BYTES} a recipe may have")
    try:
        value = yaml.load(text, Loader=_RecipeLoader)
    except RecursionError:
        raise RecipeError("the YAML is nested too deeply") from None
    check_expanded_size(value)
    return value


def check_expanded_size(value: Any) -> int:
    """How many values ``value`` holds with YAML aliases expanded (each shared list or mapping counted as often
    as it is referenced); a :class:`RecipeError` beyond :data:`MAX_RECIPE_VALUES` (a "billion laughs" alias
    bomb), beyond :data:`MAX_RECIPE_DEPTH` levels of nesting, or for a self-referencing alias."""
    sizes: dict[int, int] = {}

    def size(v: Any, depth: int, open_ids: tuple[int, ...]) -> int:
        if not isinstance(v, (dict, list)):
            return 1
        if id(v) in open_ids:
            raise RecipeError("a YAML alias refers to itself (an endless recipe)")
        if depth > MAX_RECIPE_DEPTH:
            raise RecipeError(f"the recipe is nested more than {MAX_RECIPE_DEPTH} levels deep")
        if id(v) not in sizes:
            children = [*v.keys(), *v.values()] if isinstance(v, dict) else v
            total = 1
            for child in children:
                total += size(child, depth + 1, (*open_ids, id(v)))
                if total > MAX_RECIPE_VALUES:
                    raise RecipeError(f"the recipe expands to over {MAX_RECIPE_VALUES} values (YAML aliases "
                                      "repeated inside each other?)")
            sizes[id(v)] = total
        return sizes[id(v)]
    return size(value, 0, ())


def apply_override(tree: dict, override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict."""
    if "=" not in override:
        raise RecipeError(f"override {override!r} must look like key.path=value")
    key, raw = override.split("=", 1)
    now = moved_key(key.strip())
    if now != key.strip():
        log.warning("override %s: %s is now %s (read as such)", override, key.strip(), now)
    parts = now.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {override!r}: '{part}' is not a section")
    try:
        node[parts[-1]] = parse_yaml(raw)
    except yaml.YAMLError as e:
        raise RecipeError(f"override {override!r}: the value is not valid YAML ({e})") from None
    except RecipeError as e:
        raise RecipeError(f"override {override!r}: {e}") from None


#: the recipes that ship with reidkit (the repository's configs/ points here)
PACKAGED_RECIPES = Path(__file__).resolve().parent / "recipes"


def packaged_recipes() -> dict[str, Path]:
    """Name (file name without .yaml) -> path of every recipe shipped with reidkit."""
    return {p.stem: p for p in sorted(PACKAGED_RECIPES.glob("*.yaml"))}


def describe_recipes() -> list[tuple[str, str]]:
    """``(name, the first line of its header comment)`` for every packaged recipe."""
    out = []
    for name, path in packaged_recipes().items():
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        out.append((name, first))
    return out


def find_recipe(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe file: ``name_or_path`` as a path (relative to ``relative_to``'s folder first, for ``_base_``),
    else a packaged recipe by name (``bot_r50_market1501`` or ``bot_r50_market1501.yaml``)."""
    path = Path(name_or_path)
    candidates = ([relative_to.parent / path] if relative_to is not None and not path.is_absolute() else []) + [path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    packaged = packaged_recipes()
    stem = path.name.removesuffix(".yaml")
    if stem in packaged and len(path.parts) == 1:
        return packaged[stem]
    raise RecipeError(f"recipe not found: {name_or_path} (a YAML file, or one of the recipes shipped with reidkit"
                      f"{did_you_mean(stem, packaged)}: `reidkit recipes` lists them)")


def read_recipe_tree(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The recipe at ``path`` as a nested dict, with its ``_base_`` recipe (if any) merged underneath: a recipe
    states only what differs from its base, as fast-reid's ``_BASE_``."""
    path = path.resolve()
    if path in chain:
        raise RecipeError(f"recipe inheritance loops: {' -> '.join(str(p) for p in (*chain, path))}")
    if len(chain) >= MAX_BASE_DEPTH:
        raise RecipeError(f"{chain[0]}: its _base_ chain is over {MAX_BASE_DEPTH} recipes deep (at {path})")
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{path}: {path.stat().st_size} bytes, over the {MAX_RECIPE_BYTES} a recipe may have")
        tree = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); a recipe is a YAML text file") \
            from None
    except RecipeError as e:
        if str(e).startswith(str(path)):
            raise
        raise RecipeError(f"{path}: {e}") from None
    except OSError as e:
        raise RecipeError(f"{path}: cannot read the recipe ({e.strerror or e})") from None
    if not tree:
        raise RecipeError(f"{path}: the recipe is empty (no sections, only comments or blank lines); "
                          "it would silently run every default. Start from a recipe in configs/ and "
                          "change what differs")
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections")
    try:
        moved = move_renamed_keys(tree)
    except ValueError as e:
        raise RecipeError(f"{path}: {e}") from None
    if moved:
        log.warning("%s: recipe keys that moved to their method's section were read where they are now (%s); "
                    "write them so to silence this", path, ", ".join(moved))
    base = tree.pop("_base_", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise RecipeError(f"{path}: _base_ must name one recipe file, got {base!r}")
    return merge_trees(read_recipe_tree(find_recipe(base, relative_to=path), (*chain, path)), tree)


def merge_trees(base: dict, child: dict) -> dict:
    """``child`` over ``base``, section by section (a mapping merges key by key; any other value replaces)."""
    merged = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_recipe(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe (a path, or the name of a packaged recipe; None: the defaults), merge it over its
    ``_base_`` recipe if it names one, and apply dotted overrides."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        path = find_recipe(path)
        tree = read_recipe_tree(path)
        source = str(path)
    for override in overrides:
        apply_override(tree, override)
    if overrides:
        source += " + overrides " + " ".join(overrides)
    check_expanded_size(tree)
    try:
        recipe = recipe_schema().model_validate(tree)
    except ValidationError as e:
        raise RecipeError(_format_errors(e, source)) from None
    if path is not None:
        _check_named(tree, source)
    return recipe


#: what every recipe file must say itself (or through its _base_ or overrides): the defaults would otherwise
#: silently write the synthetic set into ./data and train a ResNet-50 for 120 epochs
REQUIRED_KEYS = (("data", "dataset"), ("model", "name"))


def _check_named(tree: dict, source: str) -> None:
    missing = [f"{section}.{key}" for section, key in REQUIRED_KEYS
               if not isinstance(tree.get(section), dict) or key not in tree[section]]
    if missing:
        raise RecipeError(f"invalid recipe ({source}): it does not name {' and '.join(missing)}; every recipe says "
                          "which dataset and which model it trains (`reidkit datasets`, `reidkit models` list them) "
                          "instead of running the defaults")


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain Python types only (for checkpoints and reports)."""
    return recipe.model_dump(mode="json")
