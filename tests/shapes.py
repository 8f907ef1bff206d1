"""Shapes the op tests run on: odd K and H x W, real-network resolutions, tiny and larger N,
and the degenerate rows and columns (H = 1 < W, W = 1 < H) where the host layer's choice of the
pixel stride decides the result (channels_last with H = 1 or W = 1 has ambiguous strides)."""
# (N, K, H, W): K = 1, 3, 273, 2048; H x W = 1x1, 7x7, 13x17, 56x56, 1x9, 9x1; N = 1, 5, 64
BIG = [(1, 1, 1, 1), (5, 3, 7, 7), (5, 273, 13, 17), (1, 2048, 7, 7), (64, 3, 56, 56),
       (64, 273, 1, 1), (3, 5, 1, 9), (3, 5, 9, 1)]
BIG_SMALL = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17, 4, 4), (2, 3, 1, 6), (2, 3, 6, 1)]  # interpreted Triton
FORMATS = ["nchw", "channels_last", "strided"]
# (inner H x W, last H x W) pairs of real networks + equal sizes + an odd resize + equal H with
# different W (and W with H) + a row
PAIRS = [((16, 16), (8, 8)), ((14, 14), (7, 7)), ((28, 28), (14, 14)), ((7, 7), (7, 7)),
         ((13, 17), (7, 7)), ((7, 12), (7, 5)), ((12, 7), (5, 7)), ((1, 9), (1, 4))]
PAIRS_SMALL = [((8, 8), (4, 4)), ((7, 7), (4, 4)), ((5, 5), (5, 5)), ((4, 7), (4, 3))]
# N x H x W maps
MAPS = [(1, 1, 1), (5, 7, 7), (5, 13, 17), (64, 56, 56), (3, 1, 9), (3, 9, 1)]
MAPS_SMALL = [(1, 1, 1), (2, 5, 7), (2, 1, 6)]
