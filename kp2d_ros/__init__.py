"""ROS 2 glue for kp2d: nodes and entry points. All model code lives in :mod:`kp2d_model`."""
