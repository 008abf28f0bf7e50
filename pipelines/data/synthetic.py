"""Synthetic classification tasks whose labels need long-range or relative-position information.

Why: on small real data (Fashion-MNIST) attention and positional encodings change almost nothing (local
texture suffices), so an ablation there measures noise. These tasks make kappa and the encodings matter
in minutes. All are deterministic by seed, exactly balanced, any image size >= 16 and sample count.

Images are 1-channel uint8: faint uniform noise (0-63) with glyphs drawn at 255. The glyphs are a fixed
bank of `NUM_GLYPHS` random binary g x g patterns (g = size // 8), the same for every split and seed.

* ``same_corners`` (2 classes, chance 50%): one glyph near the top-left corner, one near the bottom-right
  (each jittered inside its corner box), and a random distractor glyph near each of the other two
  corners. Label 1 when the two diagonal glyphs are the same pattern. Needs content compared across the
  whole image.
* ``relative_position`` (4 classes, chance 25%): glyph A (bank pattern 0) and glyph B (pattern 1) at
  random places, plus two distractors from the rest of the bank. Label = 2 * [A is below B] + [A is
  right of B]. Needs the relative position of two objects anywhere in the image.
* ``pair_orientation`` (2 classes, chance 50%): four glyphs on a grid of g-sized cells: a horizontal
  pair (same row, columns at least two cells apart) and a vertical pair (same column). One pair shows the
  same pattern twice, the other two different patterns. Label 1 when the matching pair is the vertical
  one. Both orientations are always present, so the label needs content matched across the image
  (which pair matches) and the relative offset between the matches (its orientation). Option ``min_gap``
  (cells, default 2) sets how far apart the two glyphs of each pair are at least: at ``min_gap`` = half the
  cells per side the matches are too far apart for a convolutional network to compare (see the study
  benchmarks/studies/relative_vs_none.yaml).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

NUM_GLYPHS = 8
_BANK_SEED = 20190425  # the glyph bank is fixed: train and val (and every seed) share the same patterns


class Task(NamedTuple):
    num_classes: int
    chance: float


SYNTHETIC_TASKS = {
    "same_corners": Task(2, 0.5),
    "relative_position": Task(4, 0.25),
    "pair_orientation": Task(2, 0.5),
}


def glyph_bank(g: int) -> np.ndarray:
    """NUM_GLYPHS distinct random binary g x g patterns (about half the pixels on)."""
    rng = np.random.default_rng(_BANK_SEED + g)
    bank = []
    while len(bank) < NUM_GLYPHS:
        p = rng.random((g, g)) < 0.5
        if 0.3 * g * g <= p.sum() <= 0.7 * g * g and not any((p == b).all() for b in bank):
            bank.append(p)
    return np.stack(bank)


def glyph_size(size: int) -> int:
    """The side of a glyph (and of a grid cell) in a size x size image."""
    return max(3, size // 8)


def _draw(img, glyph, y, x):
    g = glyph.shape[0]
    img[y:y + g, x:x + g][glyph] = 255


def check_options(task: str, size: int, min_gap=None) -> None:
    """Raise ValueError (one line) for a task, image size or option that cannot make data."""
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"synthetic task must be one of {sorted(SYNTHETIC_TASKS)}; got {task!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 16:
        raise ValueError(f"synthetic image size must be an integer >= 16; got {size!r}")
    if min_gap is not None:
        if task != "pair_orientation":
            raise ValueError(f"synthetic option min_gap applies to pair_orientation only, not {task}")
        cells = size // glyph_size(size)
        if not isinstance(min_gap, int) or isinstance(min_gap, bool) or not 1 <= min_gap <= cells - 1:
            raise ValueError(f"synthetic min_gap must be an integer in 1..{cells - 1} (cells per side - 1) "
                             f"at image size {size}; got {min_gap!r}")


def make_synthetic(task: str, n: int, size: int, seed: int = 0, min_gap=None):
    """(uint8 images (n, 1, size, size), int64 labels (n,)) for ``task``; ``min_gap``: pair_orientation's
    least distance, in glyph cells, between the two glyphs of a pair (default 2)."""
    check_options(task, size, min_gap)
    gap = 2 if min_gap is None else min_gap
    rng = np.random.default_rng(seed)
    g = glyph_size(size)
    bank = glyph_bank(g)
    classes = SYNTHETIC_TASKS[task].num_classes
    labels = rng.permutation(np.arange(n) % classes)
    images = rng.integers(0, 64, size=(n, size, size), dtype=np.uint8)
    box = max(1, size // 4 - g)  # jitter range inside a corner box
    for i, label in enumerate(labels):
        img = images[i]
        if task == "same_corners":
            a = rng.integers(NUM_GLYPHS)
            b = a if label == 1 else (a + rng.integers(1, NUM_GLYPHS)) % NUM_GLYPHS
            corners = [(0, 0), (size - g, size - g), (0, size - g), (size - g, 0)]
            glyphs = [a, b, rng.integers(NUM_GLYPHS), rng.integers(NUM_GLYPHS)]
            for (cy, cx), k in zip(corners, glyphs):
                jy, jx = rng.integers(0, box + 1, size=2)
                _draw(img, bank[k], cy + (jy if cy == 0 else -jy), cx + (jx if cx == 0 else -jx))
        elif task == "pair_orientation":
            cells = size // g
            while True:
                r, c1, c2 = rng.integers(cells), *rng.choice(cells, size=2, replace=False)
                c, r1, r2 = rng.integers(cells), *rng.choice(cells, size=2, replace=False)
                spots = {(r, c1), (r, c2), (r1, c), (r2, c)}
                if abs(c1 - c2) >= gap and abs(r1 - r2) >= gap and len(spots) == 4:
                    break
            a, b, d = rng.choice(NUM_GLYPHS, size=3, replace=False)
            horiz, vert = ((a, a), (b, d)) if label == 0 else ((b, d), (a, a))
            for (y, x), k in zip([(r, c1), (r, c2), (r1, c), (r2, c)], [*horiz, *vert]):
                _draw(img, bank[k], y * g, x * g)
        else:
            below, right = divmod(int(label), 2)
            # distinct cells on a grid of g-sized cells so glyphs never overlap
            cells = size // g
            ys = rng.choice(cells, size=4, replace=False)
            xs = rng.choice(cells, size=4, replace=False)
            ya, yb = sorted(ys[:2])[::-1] if below else sorted(ys[:2])
            xa, xb = sorted(xs[:2])[::-1] if right else sorted(xs[:2])
            _draw(img, bank[0], ya * g, xa * g)
            _draw(img, bank[1], yb * g, xb * g)
            for y, x in zip(ys[2:], xs[2:]):
                _draw(img, bank[rng.integers(2, NUM_GLYPHS)], y * g, x * g)
    return torch.from_numpy(images[:, None].copy()), torch.from_numpy(labels.astype(np.int64))
