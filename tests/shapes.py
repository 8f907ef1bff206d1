"""Shapes the op tests run on: odd K and H x W, real-network resolutions, tiny and larger N."""
# (N, K, H, W): K = 1, 3, 273, 2048; H x W = 1x1, 7x7, 13x17, 56x56; N = 1, 5, 64
BIG = [(1, 1, 1, 1), (5, 3, 7, 7), (5, 273, 13, 17), (1, 2048, 7, 7), (64, 3, 56, 56),
       (64, 273, 1, 1)]
BIG_SMALL = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17, 4, 4)]  # interpreted Triton
FORMATS = ["nchw", "channels_last", "strided"]
# (inner H x W, last H x W) pairs of real networks + equal sizes + an odd resize
PAIRS = [((16, 16), (8, 8)), ((14, 14), (7, 7)), ((28, 28), (14, 14)), ((7, 7), (7, 7)),
         ((13, 17), (7, 7))]
PAIRS_SMALL = [((8, 8), (4, 4)), ((7, 7), (4, 4)), ((5, 5), (5, 5))]
