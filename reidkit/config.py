"""Typed recipes: the pydantic schema of every recipe section and its checks.

The core sections are here; each method adds its own top-level section by registering it with its piece or
miner (:mod:`reidkit.sections`), and :func:`recipe_schema` assembles the whole schema from those registries.  A
model family's own options (``model.regions``, ...) are registered with its builders and checked by
:class:`ModelConfig`.

Reading recipe files (inheritance, overrides, the shipped recipes) is :mod:`reidkit.recipe_files`; an unknown
key or a value of the wrong type raises :class:`RecipeError` naming the key path (``train.epochs``) and the file.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from .data.combine import dataset_specs
from .data.datasets import check_dataset
from .data.transforms import AugmentConfig
from .models.registry import model_options
from .names import did_you_mean
from .sections import CORE_SECTIONS, method_sections, miner_names


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and the source."""


#: input sizes a recipe may ask for, per side and in all (a 100000-pixel side would allocate gigabytes per image)
MIN_SIDE, MAX_SIDE, MAX_PIXELS = 8, 2048, 2048 * 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: Batch samplers: ``random`` (every image once per epoch, shuffled; torchreid's RandomSampler), ``identity``
#: (P identities x K images; the BoT / torchreid RandomIdentitySampler), ``camera_diverse`` (P x K with each
#: identity's K images spread over its cameras), ``identity_camera`` (P groups of one identity seen by one camera
#: x K images, as many groups per pair as its images fill), ``cross_camera`` (every identity once per pass: an
#: anchor and K - 1 images from other cameras; Cluster Contrast's RandomMultipleGallerySampler) and
#: ``identity_camera_uniform`` (every (identity, camera) pair once per pass, K images; the camera-aware proxies'
#: ClassUniformlySampler over their proxies).  ``auto`` resolves to ``identity`` when the recipe has a triplet
#: loss or hides its training labels (an unsupervised method draws P clusters x K images), else ``random``; the
#: resolved name is what the run records.
SAMPLERS = ("random", "identity", "camera_diverse", "identity_camera", "cross_camera", "identity_camera_uniform")

_RENAMED = {"data.num_identities": "data.batch_size (the global batch, = P x K with data.num_instances = K)",
            "data.camera_diverse": "data.sampler=camera_diverse"}


class DataConfig(Strict):
    # one dataset, or a list trained on together (identities kept apart, cameras offset; query / gallery of the
    # first): then data.root is a list in the same order, and data.options a list of mappings (or {})
    dataset: str | list[str] = "synthetic"
    root: str | list[str] = "data/synthetic"
    options: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)   # extra dataset arguments
    height: int = Field(256, ge=MIN_SIDE, le=MAX_SIDE)
    width: int = Field(128, ge=MIN_SIDE, le=MAX_SIDE)
    sampler: Literal["auto", "random", "identity", "camera_diverse", "identity_camera", "cross_camera",
                     "identity_camera_uniform"] = "auto"
    batch_size: int = Field(64, ge=2)         # the global batch: all processes together (BatchNorm needs 2)
    num_instances: int = Field(4, gt=0)       # K images per identity (identity samplers): P = batch_size / K
    test_batch_size: int = Field(128, gt=0)
    skip_bad_images: bool = False
    # known: the training identities are labels; hidden: training never reads them (unsupervised adaptation:
    # a method such as cluster_memory labels the training images itself; the true ones are kept for its
    # diagnostics only, and query / gallery keep theirs for evaluation)
    labels: Literal["known", "hidden"] = "known"
    # hold these training identities out as a validation query/gallery (a count, or a fraction of those seen by
    # two or more cameras; seeded by train.seed): model selection and lr plateaus then never read the test set
    val_identities: int | float | None = Field(None, gt=0)
    cache_file: str | None = None          # memory-mapped cache for the train split
    # the decoded uint8 train images on the GPU (auto: when they take under a quarter of its free memory)
    cache_on_device: bool | Literal["auto"] = "auto"
    decode_workers: int | None = Field(None, gt=0)   # decoding threads (None: every core)

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, now in _RENAMED.items():
                if key.split(".")[1] in data:
                    raise ValueError(f"{key} was replaced by {now}")
        return data

    @model_validator(mode="after")
    def _one_root_per_dataset(self) -> DataConfig:
        for name, _, options in dataset_specs(self.dataset, self.root, self.options):
            check_dataset(name, options)
        return self

    @model_validator(mode="after")
    def _bounded_input(self) -> DataConfig:
        if self.height * self.width > MAX_PIXELS:
            raise ValueError(f"height x width = {self.height} x {self.width} is over {MAX_PIXELS} pixels")
        return self

    @property
    def num_identities(self) -> int:
        """P of an identity sampler's P x K batch."""
        return self.batch_size // self.num_instances


#: the model section's keys that do not shape the network (every other key is passed to its builder)
NOT_SHAPING = ("name", "pretrained")


#: options every model had in the schema before model families registered their own: a recorded recipe (a
#: checkpoint's, a run's recipe.json) of a model that does not take them holds them at these values
_FORMER_SHARED_OPTIONS = {"regions": 2, "region_dim": None, "reduction": "light", "cell_ratio": 4, "ptl_head": "bnneck"}


class ModelConfig(Strict):
    """The recipe's ``model`` section: the options of the BNNeck head every family shares, and the options of
    the named model's family (a regional model's ``regions``, a PTL network's ``cell_ratio``, ...), which the
    family registers with its builders (:func:`reidkit.models.register_model`'s ``options``) and which are
    validated by the family's own pydantic model."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "resnet50_bnneck"
    last_stride: Literal[1, 2] = 1
    pretrained: str | None = "auto"        # auto (torch hub cache), none, or a path
    pooling: Literal["avg", "gem"] = "avg"
    bnneck: bool = True
    test_feature: Literal["after_bn", "before_bn"] = "after_bn"
    feature_clip: tuple[float, float] | None = None   # clip pooled features (adaptive L2's objective module: [0, 1])
    bn_bias: Literal["frozen", "trained"] = "frozen"     # the BNNeck's bias (BoT: frozen; adaptive L2: trained)
    classifier: Literal["linear", "cosine"] = "linear"   # cosine: logits are cosines (loss.id_loss with a margin)

    @model_validator(mode="after")
    def _family_options(self) -> ModelConfig:
        given = dict(self.__pydantic_extra__ or {})
        family = model_options(self.name)                # an unknown model name: a ValueError that lists them
        if family is None:
            unknown = [k for k, v in given.items() if _FORMER_SHARED_OPTIONS.get(k, object()) != v]
            if unknown:
                known = list(type(self).model_fields)
                raise ValueError("; ".join(f"unknown key 'model.{k}'{did_you_mean(k, known)}" for k in unknown)
                                 + f": model {self.name!r} takes no option {', '.join(unknown)} (its options: "
                                 f"{', '.join(k for k in known if k not in NOT_SHAPING)})")
            options: dict[str, Any] = {}
        else:
            given = {k: v for k, v in given.items()
                     if k in family.model_fields or _FORMER_SHARED_OPTIONS.get(k, object()) != v}
            try:
                options = family.model_validate(given).model_dump()
            except ValidationError as e:
                raise ValueError("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
                                 + f" (model {self.name!r} takes {', '.join(family.model_fields)} besides the "
                                 "shared options)") from None
        object.__setattr__(self, "__pydantic_extra__", options)     # recorded whole: the family's defaults too
        return self

    def family_options(self) -> dict[str, Any]:
        """The named model's family options, defaults included (empty for a family without any)."""
        return dict(self.__pydantic_extra__ or {})

    def options(self) -> dict:
        """Keyword arguments for :func:`reidkit.models.build_model` that shape the network: the options whose
        value differs from the default (every builder's defaults are the schema's).  A model that has no such
        option (``model.pooling=gem`` for OSNet's full model) then refuses it by name instead of ignoring it.
        """
        shared = {key: getattr(self, key) for key, field in type(self).model_fields.items()
                  if key not in NOT_SHAPING and getattr(self, key) != field.default}
        family = model_options(self.name)
        defaults = family().model_dump() if family is not None else {}
        return shared | {k: v for k, v in self.family_options().items() if v != defaults.get(k)}


class LossConfig(Strict):
    """The objective every recipe has: label-smoothed identity loss + triplet loss over the ``miner``'s
    triplets.  What a method adds (center loss, adaptive L2, ...) is its own top-level section."""

    label_smoothing: float = Field(0.1, ge=0, lt=1)
    ce_weight: float = Field(1.0, ge=0)
    # the identity loss: softmax (the linear classifier's logits), or a margin on cosine logits (model.classifier:
    # cosine): cosface, arcface, circle, with their scale and margin (None: each loss's default, losses/margin.py)
    id_loss: Literal["softmax", "cosface", "arcface", "circle"] = "softmax"
    id_loss_scale: float | None = Field(None, gt=0)
    id_loss_margin: float | None = Field(None, ge=0, lt=1)
    triplet_weight: float = Field(1.0, ge=0)
    triplet_margin: Annotated[float, Field(ge=0)] | None = 0.3     # null = soft margin
    # a registered miner (`reidkit methods` lists them); one with options reads the recipe section of its name
    miner: str = "batch_hard"

    @field_validator("miner")
    @classmethod
    def _registered_miner(cls, value: str) -> str:
        names = miner_names()
        if value not in names:
            raise ValueError(f"unknown miner {value!r}{did_you_mean(value, names)}; registered: {', '.join(names)}")
        return value


class OptimConfig(Strict):
    name: Literal["adam", "amsgrad", "sgd"] = "adam"
    lr: float = Field(3.5e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)   # adam / amsgrad (torchreid's default: 0.9, 0.99)
    weight_decay: float = Field(5e-4, ge=0)
    weight_decay_bias: float = Field(5e-4, ge=0)
    bias_lr_factor: float = Field(1.0, gt=0)
    momentum: float = Field(0.9, ge=0)


class ScheduleConfig(Strict):
    kind: Literal["multistep", "cosine", "plateau"] = "multistep"
    warmup_epochs: int = Field(10, ge=0)
    warmup_factor: float = Field(0.01, gt=0, le=1)
    milestones: list[int] = Field(default_factory=lambda: [40, 70])
    gamma: float = Field(0.1, gt=0)
    min_lr: float = Field(0.0, ge=0)
    patience: int = Field(5, ge=1)
    # when the schedule advances: epoch_end (torchreid's: epoch e, counted from 1, trains with the factor of e - 1,
    # so the first epoch at warmup_factor) or epoch_start (BoT's code, whose scheduler steps as each epoch starts:
    # epoch e trains with the factor of e; full lr at epoch warmup_epochs, drops at the milestones themselves)
    step_at: Literal["epoch_end", "epoch_start"] = "epoch_end"


_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class TrainConfig(Strict):
    epochs: int = Field(120, gt=0)
    # batches per epoch: pass (one pass of the sampler), images (the epoch's training images / batch size: the
    # camera-aware proxies' epoch), or a number N (the sampler's passes repeated until N: Cluster Contrast's --iters)
    iterations: Annotated[int, Field(gt=0, strict=True)] | Literal["pass", "images"] = "pass"
    eval_every: int = Field(10, gt=0)
    seed: int = Field(0, ge=0, lt=2**63)
    device: str = "auto"                      # auto (CUDA when available), cpu, cuda, cuda:N
    # mixed precision: bf16 (autocast; CPU and CUDA), fp16 (autocast + gradient scaler), off;
    # true / false are read as bf16 / off
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = True                # NHWC memory format for model and batches
    # GPU runs that repeat bit for bit (deterministic cuDNN / cuBLAS kernels, no autotuning; slower); without it
    # a GPU run of a seed differs from the next in the last bits, which a short training amplifies
    deterministic: bool = False
    threads: int | None = Field(None, gt=0)   # torch CPU threads (None: torch's default or $REIDKIT_THREADS)
    sync_bn: bool = True                      # under DDP: BatchNorm statistics over the global batch
    dist_timeout: float = Field(1800.0, gt=0)    # seconds a collective waits for the other processes
    fixbase_epochs: int = Field(0, ge=0)      # fine-tuning: only open_layers train for this many epochs
    # what best.pth and the plateau schedule read: val (data.val_identities), last (no selection: best.pth is the
    # latest evaluated epoch), test (only when asked; flagged in the log and the report), or auto (val when
    # there is a validation split, else last)
    select_on: Literal["auto", "val", "last", "test"] = "auto"
    # BatchNorm while training: update (batch statistics, running averages updated), frozen (eval mode: the
    # loaded statistics normalise; scale and shift still train), recalibrate (first measure real statistics on
    # training images without changing the function, then update: for BN-folded imports), auto (what
    # model.pretrained's checkpoint asks for, as `reidkit import-onnx` writes; else update)
    bn_stats: Literal["auto", "update", "frozen", "recalibrate"] = "auto"
    # before each evaluation, every BatchNorm's running statistics re-measured as plain averages over this many
    # clean training images (fast-reid's precise BN; 0: off, the running averages of the last batches stay)
    precise_bn: int = Field(0, ge=0)
    open_layers: list[str] = Field(default_factory=lambda: ["classifier"])
    output_dir: str = "runs/bot"
    log_every: int = Field(20, gt=0)
    # without a progress bar (no terminal, a redirected log, --no-progress): a progress line every this many
    # seconds (images done, img/s, ETA, loss); 0 = none
    progress_seconds: float = Field(30.0, ge=0)

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_bool(cls, value: Any) -> Any:
        return {True: "bf16", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _precise_bn_needs_updated_statistics(self) -> TrainConfig:
        if self.precise_bn and self.bn_stats == "frozen":
            raise ValueError(f"precise_bn={self.precise_bn} re-measures BatchNorm statistics that bn_stats=frozen "
                             "keeps fixed: choose one")
        return self


class EvalDatasetConfig(Strict):
    """Another dataset's query / gallery, evaluated beside the recipe's own (cross-dataset protocol)."""
    dataset: str
    root: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_dataset(self) -> EvalDatasetConfig:
        check_dataset(self.dataset, self.options, "eval.datasets options")
        return self


class EvalConfig(Strict):
    metric: Literal["euclidean", "cosine"] = "cosine"
    flip: bool = False                        # average features of the image and its mirror
    rerank: bool = False
    max_rank: int = Field(50, gt=0)
    query_expansion: int = Field(0, ge=0)     # alpha-QE over this many nearest gallery embeddings (0: off)
    database_augmentation: int = Field(0, ge=0)   # DBA over this many nearest gallery neighbours (0, 1: off)
    expansion_alpha: float = Field(3.0, ge=0)     # the similarity exponent of both
    # market: every gallery image ranked (Market-1501 rule); single_shot: CUHK03's classic protocol (one random
    # gallery image per identity, CMC averaged over single_shot_trials seeded draws; mAP stays multi-shot)
    protocol: Literal["market", "single_shot"] = "market"
    single_shot_trials: int = Field(20, gt=0)
    # verification: TAR at FAR 1e-4 / 1e-3 / 1e-2 over the query-gallery pairs, with each distance threshold
    verification: bool = False
    # cross-dataset: these test sets too (after training, and in ``reidkit eval``), each reported on its own
    datasets: list[EvalDatasetConfig] = Field(default_factory=list)


class Recipe(Strict):
    """A recipe's core sections.  The recipes training reads are of :func:`recipe_schema`'s subclass, which
    adds one section per registered method (``recipe.center_loss``, ...; :meth:`section` reads one by name)."""

    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    def section(self, name: str) -> Any:
        """The method section ``name`` (e.g. ``center_loss``) of this recipe."""
        if name not in type(self).model_fields or name in CORE_SECTIONS:
            raise KeyError(f"the recipe has no method section {name!r}"
                           f"{did_you_mean(name, type(self).model_fields)}")
        return getattr(self, name)

    def __reduce__(self) -> tuple:
        # the assembled schema is made at run time: a pickled recipe (a spawned process) is rebuilt from its values
        return _rebuild_recipe, (self.model_dump(mode="json"),)

    @model_validator(mode="after")
    def _batches_fit_the_losses(self) -> Recipe:
        d, loss = self.data, self.loss
        if d.sampler == "auto":                     # recorded resolved, so the run says which it used
            # hidden labels: the method's pseudo-identities are drawn P x K (its memory loss contrasts them)
            object.__setattr__(d, "sampler", "identity" if loss.triplet_weight > 0 or d.labels == "hidden"
                               else "random")
        if d.sampler != "random":
            if d.batch_size % d.num_instances:
                raise ValueError(f"data.batch_size={d.batch_size} is not a multiple of data.num_instances="
                                 f"{d.num_instances} (the {d.sampler} sampler draws P x K batches)")
            if loss.triplet_weight > 0 and d.num_instances < 2:
                raise ValueError("the triplet loss needs data.num_instances >= 2 (a positive for every anchor)")
        elif loss.triplet_weight > 0:
            raise ValueError("data.sampler=random gives no positive pairs for the triplet loss: use "
                             "data.sampler=identity (or camera_diverse), or loss.triplet_weight=0")
        if self.train.select_on == "val" and d.val_identities is None:
            raise ValueError("train.select_on=val needs a validation split: set data.val_identities (e.g. 100 or 0.1)")
        selects = self.train.select_on if self.train.select_on != "auto" else (
            "val" if d.val_identities is not None else "last")
        if self.schedule.kind == "plateau" and selects == "last":
            raise ValueError("schedule.kind=plateau lowers the lr when a metric stops improving: give it a validation "
                             "split (data.val_identities, e.g. 100) — or train.select_on=test, which reads the test "
                             "set and is flagged as such")
        if d.labels == "hidden" and d.val_identities is not None:
            raise ValueError("data.labels=hidden: a validation split needs identity labels; leave "
                             "data.val_identities unset (best.pth is then the last epoch)")
        if d.labels == "hidden" and self.loss.ce_weight > 0:
            raise ValueError("data.labels=hidden: the identity (CE) loss needs identity labels; set loss.ce_weight=0 "
                             "(the unsupervised method's memory loss takes its place)")
        if isinstance(d.val_identities, float) and d.val_identities >= 1:
            raise ValueError(f"data.val_identities={d.val_identities}: a fraction must be below 1 (or give a count)")
        if (loss.id_loss != "softmax") != (self.model.classifier == "cosine"):
            raise ValueError(f"loss.id_loss={loss.id_loss} with model.classifier={self.model.classifier}: the margin "
                             "losses (cosface, arcface, circle) take the cosine classifier's logits, softmax the "
                             "linear one's; set both (loss.id_loss=arcface model.classifier=cosine)")
        if loss.id_loss == "softmax" and (loss.id_loss_scale is not None or loss.id_loss_margin is not None):
            raise ValueError("loss.id_loss_scale / id_loss_margin belong to a margin loss: set loss.id_loss "
                             "(cosface, arcface or circle)")
        return self


def _rebuild_recipe(tree: dict) -> Recipe:
    return recipe_schema().model_validate(tree)


_SCHEMAS: dict[tuple, type[Recipe]] = {}


def recipe_schema() -> type[Recipe]:
    """The recipe schema: :class:`Recipe`'s core sections and one top-level section per registered method
    (:func:`reidkit.sections.method_sections`), each defaulting to its model's defaults."""
    sections = method_sections()
    key = tuple((name, id(config)) for name, config in sorted(sections.items()))
    if key not in _SCHEMAS:
        fields: dict[str, Any] = {name: (config, Field(default_factory=config)) for name, config in sections.items()}
        _SCHEMAS[key] = create_model("Recipe", __base__=Recipe, __module__=__name__, **fields)
    return _SCHEMAS[key]


#: recipe keys that moved to a method's own section: ``{old dotted key: new dotted key}``
MOVED_KEYS = {"loss.center_weight": "center_loss.weight", "loss.center_lr": "center_loss.lr",
              "loss.adaptive_l2": "adaptive_l2", "loss.distill": "distillation", "loss.mutual": "mutual",
              "loss.camera_bias": "camera_aware"}


def move_renamed_keys(tree: dict) -> list[str]:
    """Move the keys of :data:`MOVED_KEYS` in a raw recipe tree (a file, a checkpoint's recipe) to where they
    are now, in place; returns ``"old -> new"`` for each one moved.  Both spellings at once is an error."""
    moved = []
    for old, new in MOVED_KEYS.items():
        *old_parents, old_key = old.split(".")
        parent: Any = tree
        for part in old_parents:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or old_key not in parent:
            continue
        *new_parents, new_key = new.split(".")
        target = tree
        for part in new_parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ValueError(f"{old} moved to {new}, but {part} is not a section")
        if new_key in target:
            raise ValueError(f"{old} moved to {new}: give one of them, not both")
        target[new_key] = parent.pop(old_key)
        moved.append(f"{old} -> {new}")
    return moved


def moved_key(dotted: str) -> str:
    """Where the recipe key ``dotted`` (an override's) is now: ``loss.center_weight`` -> ``center_loss.weight``,
    ``loss.distill.teacher`` -> ``distillation.teacher``; any other key unchanged."""
    for old, new in MOVED_KEYS.items():
        if dotted == old or dotted.startswith(old + "."):
            return new + dotted[len(old):]
    return dotted
