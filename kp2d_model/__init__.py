"""kp2d_model: KeyPointNet (KP2D, ICLR 2020) in plain PyTorch — networks, checkpoints, detector,
matching, losses, training and HPatches evaluation. No ROS import anywhere in this package."""

from kp2d_model.networks import InlierNet, KeypointNet, KeypointResnet

__all__ = ["InlierNet", "KeypointNet", "KeypointResnet"]
