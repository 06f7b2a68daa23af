"""Re-export of ``kp2d_model.tracks`` (track ids and history), which the node imports from here."""

from kp2d_model.tracks import TrackHistory, TrackIds, carry_tracks

__all__ = ["TrackHistory", "TrackIds", "carry_tracks"]
