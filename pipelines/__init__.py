"""pconv3d application layer: the ``pconv3d`` command line, training, inference and evaluation."""
