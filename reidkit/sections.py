"""The registries of what a recipe can switch on beyond its core sections, and the recipe sections they own.

A training piece (:mod:`reidkit.pieces`) or a miner registers itself with its typed recipe section::

    @register_piece("center_loss", config=CenterLossConfig)
    def build(ctx: PieceContext[CenterLossConfig]) -> CenterLossPiece | None: ...

and :func:`reidkit.config.recipe_schema` adds a top-level section ``center_loss`` of that type to the recipe.
So that a registered piece is never left unimported (its section would then be an unknown key, and the piece
would silently never run), the schema is always assembled after :func:`load_methods`, which imports every
module of :data:`BUILTIN_METHODS` and every module another package declares under the entry-point group
:data:`ENTRY_POINT_GROUP` (``[project.entry-points."reidkit.methods"]`` in its pyproject.toml).

This module imports nothing of reidkit's but :mod:`reidkit.names`: the schema, the pieces and the methods all
import it, never the reverse (the methods are imported by name, at run time).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from .names import Registry

#: the recipe's own sections; a method cannot take these names
CORE_SECTIONS = ("data", "augment", "model", "loss", "optim", "schedule", "train", "eval")

#: reidkit's methods, one module each (its recipe section, its piece or miner, its registration)
BUILTIN_METHODS = ("reidkit.losses.miners", "reidkit.methods.adaptive_l2", "reidkit.methods.bn_stats",
                   "reidkit.methods.camera_aware", "reidkit.methods.center_loss", "reidkit.methods.cluster_memory",
                   "reidkit.methods.distillation", "reidkit.methods.fixbase", "reidkit.methods.mutual",
                   "reidkit.methods.precise_bn", "reidkit.methods.ptl_cells")

#: where other packages declare their methods' modules (importlib.metadata entry points)
ENTRY_POINT_GROUP = "reidkit.methods"

#: training pieces: ``(PieceContext) -> TrainingPiece | None`` (see :func:`reidkit.pieces.register_piece`)
PIECES: Registry[Callable[..., Any]] = Registry("training piece", "reidkit methods")
#: triplet miners: ``(section config or None) -> miner`` (see :func:`register_miner`), named by ``loss.miner``
MINERS: Registry[Callable[..., Any]] = Registry("miner", "reidkit methods")

_loaded: set[str] = set()


def load_methods() -> None:
    """Import every built-in method module and every module declared under :data:`ENTRY_POINT_GROUP` (once)."""
    for module in BUILTIN_METHODS:
        if module not in _loaded:
            importlib.import_module(module)
            _loaded.add(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value not in _loaded:
            try:
                ep.load()
            except Exception as e:       # a broken plug-in names itself instead of a bare traceback
                raise ImportError(f"reidkit method {ep.name!r} ({ep.value}, entry point group {ENTRY_POINT_GROUP}) "
                                  f"failed to import: {type(e).__name__}: {e}") from e
            _loaded.add(ep.value)


def method_sections() -> dict[str, type[BaseModel]]:
    """``{section name: its pydantic model}`` of every registered piece and miner that owns one."""
    load_methods()
    sections: dict[str, type[BaseModel]] = {}
    for registry in (PIECES, MINERS):
        for name, config in registry.configs.items():
            if name in CORE_SECTIONS:
                raise ValueError(f"{registry.kind} {name!r} cannot own a recipe section named like a core one "
                                 f"({', '.join(CORE_SECTIONS)})")
            if name in sections and sections[name] is not config:
                raise ValueError(f"two recipe sections named {name!r}: {sections[name].__qualname__} and "
                                 f"{config.__qualname__}")
            sections[name] = config
    return sections


def miner_names() -> list[str]:
    """Every registered miner (what ``loss.miner`` accepts)."""
    load_methods()
    return MINERS.names()


def register_miner(name: str, config: type[BaseModel] | None = None) -> Callable[[Callable[..., Any]],
                                                                                 Callable[..., Any]]:
    """Register a miner builder ``(config) -> miner`` under ``name`` (``loss.miner: name``); with ``config``,
    the recipe section ``name`` holds its options and the builder receives it (else None)."""
    return MINERS.register(name, config)
