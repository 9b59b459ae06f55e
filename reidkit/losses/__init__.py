"""Losses and miners as separate building blocks (pytorch-metric-learning's split); the methods that train
with them are :mod:`reidkit.methods`."""
from .adaptive_l2 import AdaptiveL2Regularizer, hard_sigmoid
from .camera_aware import CameraAwareBatchHardMiner, CameraMiningStats
from .center import CenterLoss, unweight_center_gradients
from .cross_entropy import CrossEntropyLabelSmooth
from .distillation import FeatureDistillationLoss
from .miners import BatchHardMiner, Triplets, pairwise_euclidean
from .mutual import mutual_kl
from .objective import ReIDObjective, build_miner
from .triplet import TripletLoss

__all__ = ["AdaptiveL2Regularizer", "hard_sigmoid", "CameraAwareBatchHardMiner", "CameraMiningStats", "CenterLoss",
           "unweight_center_gradients", "CrossEntropyLabelSmooth", "FeatureDistillationLoss", "BatchHardMiner",
           "mutual_kl", "ReIDObjective", "build_miner", "Triplets", "pairwise_euclidean", "TripletLoss"]
