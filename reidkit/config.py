"""Typed recipes: the pydantic schema of every recipe section and its checks.

Reading recipe files (inheritance, overrides, the shipped recipes) is :mod:`reidkit.recipe_files`; an unknown
key or a value of the wrong type raises :class:`RecipeError` naming the key path (``train.epochs``) and the file.
"""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .data.combine import dataset_specs
from .data.datasets import check_dataset
from .data.transforms import AugmentConfig


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the key and the source."""


#: input sizes a recipe may ask for, per side and in all (a 100000-pixel side would allocate gigabytes per image)
MIN_SIDE, MAX_SIDE, MAX_PIXELS = 8, 2048, 2048 * 1024


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


#: Batch samplers: ``random`` (every image once per epoch, shuffled; torchreid's RandomSampler), ``identity``
#: (P identities x K images; the BoT / torchreid RandomIdentitySampler) and ``camera_diverse`` (P x K with each
#: identity's K images spread over its cameras).  ``auto`` resolves to ``identity`` when the recipe has a
#: triplet loss, else ``random``; the resolved name is what the run records.
SAMPLERS = ("random", "identity", "camera_diverse")

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
    sampler: Literal["auto", "random", "identity", "camera_diverse"] = "auto"
    batch_size: int = Field(64, ge=2)         # the global batch: all processes together (BatchNorm needs 2)
    num_instances: int = Field(4, gt=0)       # K images per identity (identity samplers): P = batch_size / K
    test_batch_size: int = Field(128, gt=0)
    skip_bad_images: bool = False
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


class ModelConfig(Strict):
    name: str = "resnet50_bnneck"
    last_stride: Literal[1, 2] = 1
    pretrained: str | None = "auto"        # auto (torch hub cache), none, or a path
    pooling: Literal["avg", "gem"] = "avg"
    bnneck: bool = True
    test_feature: Literal["after_bn", "before_bn"] = "after_bn"
    feature_clip: tuple[float, float] | None = None   # clip pooled features (adaptive L2's objective module: [0, 1])
    bn_bias: Literal["frozen", "trained"] = "frozen"     # the BNNeck's bias (BoT: frozen; adaptive L2: trained)
    regions: int = Field(2, gt=0)             # *_regional models: horizontal stripes
    # *_regional models: channels each stripe is reduced to (None: 256 for the light reduction, the last stage's
    # channels / regions for the authors'), and how: light = 1x1 conv + BN + ReLU (PCB's), authors = 3x3 conv with
    # bias + ReLU (Ni et al.'s code; its biases make the paper's conv-bias category)
    region_dim: int | None = Field(None, gt=0)
    reduction: Literal["light", "authors"] = "light"
    # *_ptl models: BConv-Cell width = its block's channels // cell_ratio; the head: BNNeck, or the paper's (the
    # pooled 1x1-conv output as the feature, three fully connected layers as the classifier)
    cell_ratio: int = Field(4, gt=0)
    ptl_head: Literal["bnneck", "paper"] = "bnneck"

    def options(self) -> dict:
        """Keyword arguments for :func:`reidkit.models.build_model` that shape the network: the options whose
        value differs from the default (every builder's defaults are the schema's).  A model that has no such
        option (``model.pooling=gem`` for OSNet's full model) then refuses it by name instead of ignoring it.
        """
        shaping = ("last_stride", "pooling", "bnneck", "test_feature", "feature_clip", "bn_bias", "regions",
                   "region_dim", "reduction", "cell_ratio", "ptl_head")
        return {key: getattr(self, key) for key in shaping
                if getattr(self, key) != type(self).model_fields[key].default}


class CameraBiasConfig(Strict):
    """Camera-label based batch-hard mining (C. Jeong 2017; docs/CAMERA_MINING.md), used when
    ``loss.miner=camera_aware``."""

    k: float = Field(5.0, ge=0)
    m: float = Field(0.1, ge=0)
    schedule: Literal["decay", "constant", "early", "off"] = "decay"
    early_epochs: int = Field(10, ge=0)
    time_unit: Literal["iteration", "epoch"] = "iteration"
    bias_in_loss: bool = False


class AdaptiveL2Config(Strict):
    """Adaptive L2 regularisation (Ni, Fang and Huttunen, ICPR 2020; docs/ADAPTIVE_L2.md):
    lambda_n = amplitude * hard_sigmoid(theta_n), learned."""

    amplitude: float = Field(0.0, ge=0)       # A; 0 switches it off (the paper: 0.005)
    c: float = Field(2.5, gt=0)               # hard sigmoid half-width
    theta_init: float = 0.0                   # every theta starts here (0: lambda = A / 2)


class DistillConfig(Strict):
    """Student-Teacher Distillation (Yu et al., "Progressive Transfer Learning", Eq. 4):
    ``weight * L1(student, teacher)`` beside the ID loss."""

    teacher: str | None = None             # a reidkit checkpoint (or state_dict) of the teacher; None = off
    arch: str | None = None                # the teacher's registered model name
    weight: float = Field(0.8, ge=0)          # lambda (the paper: 0.8, with loss.ce_weight = 1 - lambda)


class MutualConfig(Strict):
    """Deep mutual learning (Zhang et al. 2018; the OSNet paper's appendix): the recipe's model and these peers
    learn together, each with the objective plus ``weight * T^2 * KL`` to the others' softened predictions."""

    peers: list[str] = Field(default_factory=list)    # the other peers' model names; [] = off
    weight: float = Field(1.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    pretrained: str | None = None     # the peers' initialisation (auto, none, imagenet, a file); None: model.pretrained


class LossConfig(Strict):
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    ce_weight: float = Field(1.0, ge=0)
    triplet_weight: float = Field(1.0, ge=0)
    triplet_margin: Annotated[float, Field(ge=0)] | None = 0.3     # null = soft margin
    miner: Literal["batch_hard", "camera_aware"] = "batch_hard"
    camera_bias: CameraBiasConfig = Field(default_factory=CameraBiasConfig)
    center_weight: float = Field(5e-4, ge=0)
    center_lr: float = Field(0.5, gt=0)
    adaptive_l2: AdaptiveL2Config = Field(default_factory=AdaptiveL2Config)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    mutual: MutualConfig = Field(default_factory=MutualConfig)


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
    # cross-dataset: these test sets too (after training, and in ``reidkit eval``), each reported on its own
    datasets: list[EvalDatasetConfig] = Field(default_factory=list)


class Recipe(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _batches_fit_the_losses(self) -> Recipe:
        d, loss = self.data, self.loss
        if d.sampler == "auto":                     # recorded resolved, so the run says which it used
            object.__setattr__(d, "sampler", "identity" if loss.triplet_weight > 0 else "random")
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
        if isinstance(d.val_identities, float) and d.val_identities >= 1:
            raise ValueError(f"data.val_identities={d.val_identities}: a fraction must be below 1 (or give a count)")
        return self
