"""Attention maps whose pattern scores are known in closed form, shared by the pattern and plot tests."""
import numpy as np


def identity(n, heads=1):
    return np.broadcast_to(np.eye(n), (heads, n, n)).copy()


def uniform(n, heads=1):
    return np.full((heads, n, n), 1.0 / n)


def one_hot_column(n, key, heads=1):
    a = np.zeros((heads, n, n))
    a[:, :, key] = 1.0
    return a


def four_neighbour(h, w):
    """Each patch splits its attention evenly over its in-grid 4-neighbours."""
    a = np.zeros((1, h * w, h * w))
    for q in range(h * w):
        r, c = divmod(q, w)
        nb = [(r + dr) * w + c + dc for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)) if 0 <= r + dr < h and 0 <= c + dc < w]
        a[0, q, nb] = 1.0 / len(nb)
    return a
