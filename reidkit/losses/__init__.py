"""Losses and miners as separate pieces."""
from .adaptive_l2 import AdaptiveL2Regularizer, hard_sigmoid
from .camera_miner import CameraAwareBatchHardMiner, CameraMiningStats
from .center import CenterLoss, unweight_center_gradients
from .cross_entropy import CrossEntropyLabelSmooth
from .distillation import FeatureDistillationLoss
from .miners import BatchHardMiner, Triplets, pairwise_euclidean
from .mutual import MutualLearningPiece, mutual_kl
from .triplet import TripletLoss

__all__ = ["AdaptiveL2Regularizer", "hard_sigmoid", "CameraAwareBatchHardMiner", "CameraMiningStats", "CenterLoss",
           "unweight_center_gradients", "CrossEntropyLabelSmooth", "FeatureDistillationLoss", "BatchHardMiner",
           "MutualLearningPiece", "mutual_kl", "Triplets", "pairwise_euclidean", "TripletLoss"]
