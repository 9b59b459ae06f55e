"""Import helpers for the peers (torchreid 0.2.5, fastreid 1.4.0); benchmark use only."""
from __future__ import annotations

import collections
import collections.abc
import copy
import warnings


def _mapping_shim() -> None:
    # fastreid 1.4.0 still imports collections.Mapping, removed in Python 3.10
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def fastreid_rank():
    """fast-reid's evaluate_rank, insisting on its Cython implementation."""
    _mapping_shim()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastreid.evaluation.rank_cylib.rank_cy import evaluate_cy
    return evaluate_cy


def fastreid_rerank():
    _mapping_shim()
    from fastreid.evaluation.rerank import re_ranking
    return re_ranking


def torchreid_rank():
    """torchreid's evaluate_rank (PyPI 0.2.5 ships no Cython: the Python fallback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.metrics.rank import IS_CYTHON_AVAI, evaluate_rank
    return evaluate_rank, IS_CYTHON_AVAI


def torchreid_rerank():
    from torchreid.reid.utils.rerank import re_ranking
    return re_ranking


_TORCHREID_DATASETS: dict[str, str] = {}


def torchreid_cuhk03_datamanager(cuhk03_root: str, height: int, width: int, batch_size: int,
                                 num_instances: int, workers: int, transforms: list[str],
                                 train_sampler: str = "RandomIdentitySampler", use_gpu: bool = False):
    """torchreid's ImageDataManager over the same CUHK03-labeled records reidkit reads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.data import ImageDataManager
        from torchreid.reid.data.datasets import register_image_dataset
        from torchreid.reid.data.datasets.dataset import ImageDataset
    from reidkit.data import build_dataset

    class CUHK03Labeled(ImageDataset):
        def __init__(self, root="", **kwargs):
            ds = build_dataset("cuhk03_labeled", cuhk03_root)
            as_tuples = lambda recs: [(r.path, r.pid, r.camid) for r in recs]  # noqa: E731
            super().__init__(as_tuples(ds.train), as_tuples(ds.query), as_tuples(ds.gallery), **kwargs)

    # torchreid's registry keeps the first class under a name: one name per data root
    name = _TORCHREID_DATASETS.setdefault(str(cuhk03_root), f"reidkit_cuhk03_labeled_{len(_TORCHREID_DATASETS)}")
    try:
        register_image_dataset(name, CUHK03Labeled)
    except ValueError:                   # registered by an earlier call in this process, for this root
        pass
    return ImageDataManager(root=cuhk03_root, sources=name, height=height, width=width,
                            transforms=transforms, batch_size_train=batch_size, workers=workers,
                            num_instances=num_instances, train_sampler=train_sampler,
                            use_gpu=use_gpu)


def torchreid_transforms(recipe) -> list[str]:
    """torchreid's names for the recipe's augmentation (flip, the enlarge-and-crop, random erasing)."""
    a = recipe.augment
    names = ["random_flip"] if a.flip > 0 else []
    if a.crop == "enlarge" and a.crop_prob > 0:
        names.append("random_crop")
    return names + (["random_erase"] if a.erasing > 0 else [])


def torchreid_sampler(recipe) -> str:
    """torchreid's sampler for the recipe's ``data.sampler``."""
    return {"random": "RandomSampler", "identity": "RandomIdentitySampler"}[recipe.data.sampler]


def torchreid_optimizer(model, recipe):
    """torchreid's optimiser (the recipe's: SGD, Adam or AMSGrad) and per-epoch multi-step schedule."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid.reid as tr
    o = recipe.optim
    optimizer = tr.optim.build_optimizer(model, optim=o.name, lr=o.lr, weight_decay=o.weight_decay,
                                         momentum=o.momentum, adam_beta1=o.betas[0], adam_beta2=o.betas[1])
    scheduler = tr.optim.build_lr_scheduler(optimizer, lr_scheduler="multi_step",
                                            stepsize=list(recipe.schedule.milestones), gamma=recipe.schedule.gamma)
    return optimizer, scheduler


class TorchreidLockstep:
    """torchreid 0.2.5's OSNet trained beside a reidkit ``Trainer``, on the same batches.

    Copies the trainer's current model weights into torchreid's model of the same
    ``arch``, builds torchreid's SGD optimiser and ``ImageSoftmaxEngine`` from the
    recipe, and wraps ``trainer.loader`` so that each batch reidkit trains on,
    torchreid's ``forward_backward`` then trains on too.  ``ours_losses`` and
    ``theirs_losses`` collect every step's loss; ``model`` is torchreid's model;
    call ``step_scheduler`` after each whole epoch.
    """

    def __init__(self, trainer, arch: str = "osnet_x0_25"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchreid.reid as tr
            from torchreid.reid.engine import ImageSoftmaxEngine
        r = trainer.recipe
        self.model = tr.models.build_model(arch, num_classes=trainer.num_classes, loss="softmax", pretrained=False)
        self.model.load_state_dict(copy.deepcopy(trainer.model.state_dict()))
        optimizer, self.scheduler = torchreid_optimizer(self.model, r)

        class DataManager:                  # the two attributes ImageSoftmaxEngine reads
            num_train_pids = trainer.num_classes
            train_loader = test_loader = None

        self.engine = ImageSoftmaxEngine(DataManager(), self.model, optimizer, scheduler=self.scheduler,
                                         label_smooth=True, use_gpu=False)
        self.ours_losses: list[float] = []
        self.theirs_losses: list[float] = []
        trainer.objective.register_forward_hook(
            lambda m, i, out: self.ours_losses.append(float(sum(out.values()).detach())))
        self.loader = trainer.loader
        trainer.loader = self

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def step_scheduler(self) -> None:
        """End of an epoch on torchreid's side (its engine steps the learning rate per epoch)."""
        self.scheduler.step()

    def __iter__(self):
        for batch in self.loader:
            images = batch.images.clone()
            yield batch
            self.model.train()
            self.theirs_losses.append(self.engine.forward_backward({"img": images, "pid": batch.pids})["loss"])
