"""Losses and miners as separate pieces."""
from .camera_miner import CameraAwareBatchHardMiner, CameraMiningStats
from .center import CenterLoss, unweight_center_gradients
from .cross_entropy import CrossEntropyLabelSmooth
from .miners import BatchHardMiner, Triplets, pairwise_euclidean
from .triplet import TripletLoss

__all__ = ["CameraAwareBatchHardMiner", "CameraMiningStats", "CenterLoss", "unweight_center_gradients", "CrossEntropyLabelSmooth", "BatchHardMiner",
           "Triplets", "pairwise_euclidean", "TripletLoss"]
