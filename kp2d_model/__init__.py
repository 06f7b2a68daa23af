"""kp2d_model: KeyPointNet (KP2D, ICLR 2020) in plain PyTorch — networks, checkpoints, detector,
matching, losses, training and HPatches evaluation. No ROS import anywhere in this package."""

from kp2d_model.checkpoint import CheckpointError, build_keypoint_net, load_keypoint_net, save_keypoint_net
from kp2d_model.detector import Detections, KeypointDetector
from kp2d_model.matching import Matches, match_descriptors, verify_geometry
from kp2d_model.networks import InlierNet, KeypointNet, KeypointResnet

__all__ = [
    "CheckpointError",
    "build_keypoint_net",
    "load_keypoint_net",
    "save_keypoint_net",
    "Detections",
    "KeypointDetector",
    "Matches",
    "match_descriptors",
    "verify_geometry",
    "InlierNet",
    "KeypointNet",
    "KeypointResnet",
]
