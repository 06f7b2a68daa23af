"""Sequence benchmark for VO front-ends (CLI ``kp2d-track-bench``): virtual camera trajectories over photos with
exact frame-to-frame homographies; kp2d vs VINS-style KLT, ORB and SIFT through the node's tracking code."""
