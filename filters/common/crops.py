"""Crop matching: is image c a crop of image s (a window of s, rescaled to full size)?

A crop moves every pixel and every hash bit, and a scoring model's embedding of a 32 px picture is not
crop-invariant either (on the embedded world a crop and its source are further apart than two
unrelated pictures of the same concept). So the test is done explicitly, on the 16x16 colour images of
the image-features stage:

1. candidates: the 4x4 colour thumbnails of a coarse grid of windows of s (sides from ``min_crop`` of
   the side upward, offsets every 1/16 of the side) are searched against the full 4x4 thumbnails of
   every row (and their mirror images); a window within ``coarse_radius`` RMS makes (s, c) a candidate;
2. verification: the 8x8 thumbnails of a fine grid of windows of s (every 1/32 of the side) are
   compared with the 8x8 thumbnail of c; c is a crop of s when the best window is within ``radius`` RMS
   (0-255) AND within ``contrast`` x c's own pixel standard deviation. The second bound is what keeps
   near-uniform pictures (blank, plain backgrounds) from matching everything: a fixed RMS radius is
   lenient for an image with little structure.

Windows are resampled with box weights (a linear map per window and axis), so a window's thumbnail is
the same whatever order the rows come in. Cost: the candidate search is an IVF search of N x (coarse
windows) queries; verification is ~2.6 Mflop per candidate source.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from siftbench.benchmark.core.image_hashing import SMALL

COARSE_CELLS, FINE_CELLS = 4, 8


@dataclass(frozen=True)
class Windows:
    """Square windows (x0, y0, side) as fractions of the image side, and their box-resampling maps."""

    boxes: np.ndarray  # (V, 3)
    maps: np.ndarray  # (V, cells, SMALL): one per window; the same map serves rows (y) and columns (x)
    x_maps: np.ndarray  # (V, cells, SMALL)


def window_grid(min_crop: float, step: float, cells: int) -> Windows:
    """Every window with side in [min_crop, 1) and offsets in [0, 1 - side], both on a grid of ``step``."""
    boxes = []
    side = 1.0
    sides = []
    while side - step >= min_crop - 1e-9:
        side = round(side - step, 9)
        sides.append(side)
    for side in sorted(sides):
        offsets = np.arange(0.0, 1.0 - side + 1e-9, step)
        for y0 in offsets:
            for x0 in offsets:
                boxes.append((x0, y0, side))
    boxes_arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 3)
    y_maps = np.stack([box_map(b[1], b[2], cells) for b in boxes_arr]) if len(boxes_arr) else np.zeros((0, cells, SMALL))
    x_maps = np.stack([box_map(b[0], b[2], cells) for b in boxes_arr]) if len(boxes_arr) else np.zeros((0, cells, SMALL))
    return Windows(boxes_arr, y_maps.astype(np.float32), x_maps.astype(np.float32))


def box_map(start: float, side: float, cells: int, size: int = SMALL) -> np.ndarray:
    """(cells, size) weights: cell k averages [start + k side / cells, start + (k + 1) side / cells) of a
    ``size``-pixel axis (coordinates as fractions of the axis), each pixel weighted by its overlap."""
    edges = start + side * np.arange(cells + 1) / cells
    pixel_lo = np.arange(size) / size
    pixel_hi = pixel_lo + 1.0 / size
    overlap = np.clip(np.minimum(edges[1:, None], pixel_hi[None, :]) - np.maximum(edges[:-1, None], pixel_lo[None, :]), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def window_thumbnails(small: np.ndarray, windows: Windows) -> np.ndarray:
    """(rows, 768) uint8 small images -> (rows, V, cells * cells * 3) float32 thumbnails of each window.

    Two BLAS products (image rows, then columns) rather than one four-operand einsum: 50x faster.
    """
    n, v = len(small), len(windows.boxes)
    cells = windows.maps.shape[1]
    img = np.asarray(small, dtype=np.float32).reshape(n, SMALL, SMALL * 3).transpose(1, 0, 2).reshape(SMALL, -1)
    rows = (windows.maps.reshape(v * cells, SMALL) @ img).reshape(v, cells, n, SMALL, 3)  # [v, k, n, q, c]
    rows = rows.transpose(0, 3, 1, 2, 4).reshape(v, SMALL, cells * n * 3)  # [v, q, (k, n, c)]
    out = (windows.x_maps @ rows).reshape(v, cells, cells, n, 3)  # [v, l, k, n, c]
    return np.ascontiguousarray(out.transpose(3, 0, 2, 1, 4)).reshape(n, v, cells * cells * 3)


def full_thumbnails(small: np.ndarray, cells: int) -> np.ndarray:
    """The whole image's ``cells`` x ``cells`` box thumbnail, (rows, cells * cells * 3) float32."""
    m = box_map(0.0, 1.0, cells).astype(np.float32)
    img = np.asarray(small, dtype=np.float32).reshape(len(small), SMALL, SMALL, 3)
    return np.einsum("kp,npqc,lq->nklc", m, img, m, optimize=True).reshape(len(small), -1)


def mirrored(thumbs: np.ndarray, cells: int) -> np.ndarray:
    t = thumbs.reshape(len(thumbs), cells, cells, 3)
    return np.ascontiguousarray(t[:, :, ::-1]).reshape(len(thumbs), -1)


def crop_pairs(
    small: np.ndarray,
    *,
    min_crop: float,
    radius: float,
    contrast: float,
    coarse_radius: float | None = None,
    coarse_contrast: float | None = None,
    mirror: bool = True,
    sources_per_copy: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, where one row's picture is a crop (>= ``min_crop`` of the side) of the other's.

    Rows must come in a fixed order (rank order): the search index is trained and filled in that order.
    """
    n = len(small)
    none = np.zeros(0, np.int64)
    if n < 2:
        return none, none
    coarse_radius = 1.5 * radius if coarse_radius is None else coarse_radius
    coarse_contrast = 1.3 * contrast if coarse_contrast is None else coarse_contrast
    src, copy, box, flip = _candidates(small, min_crop, coarse_radius, coarse_contrast, mirror, sources_per_copy)
    if not len(src):
        return none, none
    keep = _verify(small, src, copy, box, flip, min_crop, radius, contrast)
    i, j = np.minimum(src[keep], copy[keep]), np.maximum(src[keep], copy[keep])
    packed = np.unique(i * n + j)
    return packed // n, packed % n


def spread(thumbs: np.ndarray) -> np.ndarray:
    """A thumbnail's own variation: the standard deviation of its cells, averaged over R, G and B."""
    return thumbs.reshape(len(thumbs), -1, 3).std(axis=1).mean(axis=1)


def _candidates(small: np.ndarray, min_crop: float, coarse_radius: float, coarse_contrast: float, mirror: bool,
                per_copy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(source, copy, best window box, mirrored) for copies whose full 4x4 thumbnail is near a coarse window
    of the source: the windows of every row are the index and each row's full thumbnail asks for the
    windows within ``coarse_radius`` (a range search), so the cost is N queries, not N x windows."""
    n = len(small)
    windows = window_grid(min_crop, 1.0 / 16, COARSE_CELLS)
    v = len(windows.boxes)
    dim = COARSE_CELLS * COARSE_CELLS * 3
    index = _index(np.concatenate([window_thumbnails(small[s : s + 4096], windows).reshape(-1, dim)
                                   for s in range(0, n, 4096)]))  # fmt: skip
    full = full_thumbnails(small, COARSE_CELLS)
    queries = np.concatenate([full, mirrored(full, COARSE_CELLS)]) if mirror else full
    bound = np.minimum(coarse_radius, coarse_contrast * spread(full))
    found_q, found_v, found_d = [], [], []
    for s in range(0, len(queries), 8192):
        lims, d, hit = index.range_search(np.ascontiguousarray(queries[s : s + 8192]), coarse_radius**2 * dim)
        found_q.append(s + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64)))
        found_v.append(hit.astype(np.int64))
        found_d.append(np.sqrt(np.maximum(d, 0) / dim))
    q, hit, d = np.concatenate(found_q), np.concatenate(found_v), np.concatenate(found_d)
    copy, src = q % n, hit // v
    ok = (copy != src) & (d <= bound[copy])
    q, hit, d, copy, src = q[ok], hit[ok], d[ok], copy[ok], src[ok]
    # Best window per (source, copy, mirrored); then the closest few sources per copy.
    order = np.lexsort((hit, d, src, q))
    q, hit, d, src = q[order], hit[order], d[order], src[order]
    first = np.ones(len(q), dtype=bool)
    first[1:] = (q[1:] != q[:-1]) | (src[1:] != src[:-1])
    q, hit, d, src = q[first], hit[first], d[first], src[first]
    order = np.lexsort((src, d, q))
    q, hit, src = q[order], hit[order], src[order]
    start = np.searchsorted(q, q)
    near = (np.arange(len(q)) - start) < per_copy
    q, hit, src = q[near], hit[near], src[near]
    return src, q % n, windows.boxes[hit % v], q >= n


def _index(vectors: np.ndarray):
    """Exact search for small sets; beyond that an inverted file (~sqrt N cells, 8 probed) holding the
    thumbnails as bytes (their values are 0-255 averages: rounding moves an RMS by < 0.3)."""
    import faiss

    dim = vectors.shape[1]
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors) <= 100_000:
        index = faiss.IndexFlatL2(dim)
    else:
        lists = int(np.sqrt(len(vectors)))
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(dim), dim, lists,
                                              faiss.ScalarQuantizer.QT_8bit_direct)  # fmt: skip
        index.by_residual = False  # bytes hold the values themselves; a residual can be negative
        # An evenly spaced training sample in the given (rank) order: the same rows give the same cells.
        index.train(vectors[:: max(1, len(vectors) // (40 * lists))])
        index.nprobe = 8
    index.add(np.rint(vectors))
    return index


def _verify(small: np.ndarray, src: np.ndarray, copy: np.ndarray, box: np.ndarray, flip: np.ndarray,
            min_crop: float, radius: float, contrast: float, chunk: int = 512) -> np.ndarray:  # fmt: skip
    """Per candidate: the best of the 27 fine windows around its coarse window (offsets and side +-1/32)
    against the copy's 8x8 thumbnail; a crop when within ``radius`` and ``contrast`` x the copy's spread."""
    full = full_thumbnails(small, FINE_CELLS)
    target = np.where(flip[:, None], mirrored(full[copy], FINE_CELLS), full[copy])
    bound = np.minimum(radius, contrast * spread(full))[copy]
    steps = np.array([-1, 0, 1]) / 32
    dx, dy, ds = (g.ravel() for g in np.meshgrid(steps, steps, steps, indexing="ij"))
    keep = np.zeros(len(src), dtype=bool)
    img = np.asarray(small, dtype=np.float32).reshape(len(small), SMALL, SMALL * 3)
    for s in range(0, len(src), chunk):
        b = box[s : s + chunk]
        side = np.clip(b[:, 2:3] + ds, min_crop - 1 / 32, 1.0)  # (P, 27)
        x0 = np.clip(b[:, 0:1] + dx, 0.0, 1.0 - side)
        y0 = np.clip(b[:, 1:2] + dy, 0.0, 1.0 - side)
        p, w = side.shape
        ay = box_maps(y0.ravel(), side.ravel(), FINE_CELLS).reshape(p, w * FINE_CELLS, SMALL)
        ax = box_maps(x0.ravel(), side.ravel(), FINE_CELLS).reshape(p, w, FINE_CELLS, SMALL)
        rows = (ay @ img[src[s : s + chunk]]).reshape(p, w, FINE_CELLS, SMALL, 3)  # [p, w, k, q, c]
        rows = rows.transpose(0, 1, 3, 2, 4).reshape(p, w, SMALL, FINE_CELLS * 3)  # [p, w, q, (k, c)]
        views = (ax @ rows).reshape(p, w, FINE_CELLS, FINE_CELLS, 3).transpose(0, 1, 3, 2, 4)  # [p, w, k, l, c]
        diff = views.reshape(p, w, -1) - target[s : s + chunk, None, :]
        best = np.sqrt(np.einsum("pwd,pwd->pw", diff, diff).min(axis=1) / diff.shape[2])
        keep[s : s + chunk] = best <= bound[s : s + chunk]
    return keep


def box_maps(starts: np.ndarray, sides: np.ndarray, cells: int, size: int = SMALL) -> np.ndarray:
    """``box_map`` for many windows at once: (windows, cells, size) float32."""
    edges = starts[:, None] + sides[:, None] * np.arange(cells + 1)[None, :] / cells  # (M, cells + 1)
    pixel_lo = np.arange(size) / size
    lo = np.maximum(edges[:, :-1, None], pixel_lo[None, None, :])
    hi = np.minimum(edges[:, 1:, None], pixel_lo[None, None, :] + 1.0 / size)
    overlap = np.clip(hi - lo, 0, None)
    return (overlap / overlap.sum(axis=2, keepdims=True)).astype(np.float32)
