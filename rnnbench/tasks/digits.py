"""Sequential handwritten digits: the 8x8 digits bundled with scikit-learn, read pixel by pixel or row by row.

The small-scale stand-in for sequential MNIST (Le, Jaitly & Hinton 2015) and its permuted variant.
Data: ``sklearn.datasets.load_digits()`` (UCI optical recognition of handwritten digits, the test
part; shipped with scikit-learn, no download): 1797 images of 8x8 pixels with integer grey levels
0..16, labels 0..9 (174-183 images per class).

Encoding. An image's pixels in row-major order (pixel 8r + c is row r, column c), divided by 16 so
they lie in [0, 1], form the vector v [64]. With ``permute=True`` one fixed permutation
``perm = np.random.default_rng(permutation_seed).permutation(64)`` is applied first, v := v[perm]
(the same for every image, train and test). Then

    layout="pixel":  x [B, 64, 1], step t reads v[t]               (seq_len = 64)
    layout="row":    x [B, 8, 8],  step t reads v[8t : 8t + 8]      (seq_len = 8; without permute, row t)
    y [B] int: the digit, read after the last step (readout "last", 10 classes, mask None)

``seq_len`` is fixed by the layout: it is accepted only when it equals the layout's length. The task
does not generalise to other lengths, and ``length_range`` is rejected (an image has one length).

Split (numpy, at build time, deterministic). Stratified: for each class c, in ascending order, with
its n_c images in scikit-learn's order, ``rng.permutation`` of their indices is drawn from one
``rng = np.random.default_rng(split_seed)`` and its first floor(test_fraction * n_c + 1/2) go to the
test split, the rest to the training split (the default 0.2 gives 359 test and 1438 training
images). ``sample`` draws training images uniformly with replacement (jax.random, the split a
constant array on the device); ``sample_eval`` draws test images the same way, so evaluation and
diagnostics run on held-out digits.

Loss: cross-entropy; metric: accuracy. Baseline: the best input-blind predictor learnt from the
training split predicts its class frequencies p_c; scored on the test split (where evaluation
draws, with test frequencies q_c) its expected loss is the cross-entropy

    baseline = -sum_c q_c ln p_c        (2.30253 for the default split; ln 10 = 2.30259)

Solved: test loss below ``solved_ratio`` * baseline; the default 0.1 is 0.23 nats, the loss of a
model that puts on average probability e^-0.23 = 0.79 on the right digit.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rnnbench.cells.base import check_choice
from rnnbench.tasks.base import Batch, Task, accuracy, check_solved_ratio, mean_cross_entropy

LAYOUTS = ("pixel", "row")
SIDE = 8
NUM_PIXELS = SIDE * SIDE
NUM_CLASSES = 10
GREY_LEVELS = 16  # pixel values are 0..16


class DigitsData(NamedTuple):
    """The split as numpy arrays: ``x_* [N, T, D]`` float32 in [0, 1], ``y_* [N]`` int32.

    ``train_index`` and ``test_index`` (sorted) index ``load_digits()``'s images; ``permutation`` is
    the pixel order read (``arange(64)`` without ``permute``).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    permutation: np.ndarray


@functools.cache
def _raw() -> tuple[np.ndarray, np.ndarray]:
    """``(images [1797, 8, 8] float64 in 0..16, labels [1797] int)`` from scikit-learn (read once)."""
    from sklearn.datasets import load_digits  # imported here: only this task needs scikit-learn

    data = load_digits()
    images, labels = np.array(data.images), np.array(data.target)
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


def _test_counts(labels: np.ndarray, test_fraction: float) -> np.ndarray:
    return np.floor(test_fraction * np.bincount(labels, minlength=NUM_CLASSES) + 0.5).astype(np.int64)


def stratified_split(labels: np.ndarray, test_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_index, test_index)``, sorted: the stratified split of the module docstring."""
    rng = np.random.default_rng(split_seed)
    counts = _test_counts(labels, test_fraction)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: counts[c]] for c in range(NUM_CLASSES)])
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def load_split(layout: str = "pixel", permute: bool = False, permutation_seed: int = 0, test_fraction: float = 0.2,
               split_seed: int = 0) -> DigitsData:
    """The digits laid out and split as the module docstring says (arguments validated by ``digits``)."""
    images, labels = _raw()
    perm = np.random.default_rng(permutation_seed).permutation(NUM_PIXELS) if permute else np.arange(NUM_PIXELS)
    pixels = (images.reshape(-1, NUM_PIXELS)[:, perm] / GREY_LEVELS).astype(np.float32)
    x = pixels[:, :, None] if layout == "pixel" else pixels.reshape(-1, SIDE, SIDE)
    y = labels.astype(np.int32)
    train, test = stratified_split(labels, test_fraction, split_seed)
    return DigitsData(x[train], y[train], x[test], y[test], train, test, perm)


def prior_baseline(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """``-sum_c q_c ln p_c``: the training class frequencies p scored on the test frequencies q."""
    p = np.bincount(y_train, minlength=NUM_CLASSES) / len(y_train)
    q = np.bincount(y_test, minlength=NUM_CLASSES) / len(y_test)
    return float(-sum(qc * math.log(pc) for qc, pc in zip(q, p, strict=True) if qc > 0))


def _check_seed(key: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"task.{key}={value!r} must be an integer >= 0")


def digits(seq_len: int = 64, layout: str = "pixel", permute: bool = False, permutation_seed: int = 0,
           test_fraction: float = 0.2, split_seed: int = 0, solved_ratio: float = 0.1,
           length_range: list[int] | None = None) -> Task:
    """Sequential (optionally permuted) 8x8 digits; solved when test loss < ``solved_ratio`` * baseline."""
    check_choice("task.layout", layout, LAYOUTS)
    steps = NUM_PIXELS if layout == "pixel" else SIDE
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len != steps:
        raise ValueError(f"task.seq_len={seq_len!r} must be {steps}: layout {layout!r} reads {steps} steps "
                         "(pixel: 64, row: 8)")
    if not isinstance(permute, bool):
        raise ValueError(f"task.permute={permute!r} must be true or false")
    _check_seed("permutation_seed", permutation_seed)
    _check_seed("split_seed", split_seed)
    if (not isinstance(test_fraction, (int, float)) or isinstance(test_fraction, bool)
            or not 0.0 < test_fraction < 1.0):
        raise ValueError(f"task.test_fraction={test_fraction!r} must be in (0, 1)")
    labels = _raw()[1]
    counts, sizes = _test_counts(labels, test_fraction), np.bincount(labels, minlength=NUM_CLASSES)
    if np.any(counts < 1) or np.any(counts > sizes - 1):
        raise ValueError(f"task.test_fraction={test_fraction!r} leaves a class with no training or no test image: "
                         f"it must give each class (174-183 images) at least one of each")
    check_solved_ratio(solved_ratio)
    if length_range is not None:
        raise ValueError(f"task.length_range={length_range!r} is not supported by digits: an image has one "
                         "length, set by task.layout (use null)")

    data = load_split(layout, permute, permutation_seed, test_fraction, split_seed)
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)

    def draw(x, y):
        def sample(key, batch_size):
            idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
            return Batch(x[idx], y[idx], None)

        return sample

    def loss(pred, batch):
        return mean_cross_entropy(pred, batch.y)

    def metric(pred, batch):
        return accuracy(pred, batch.y)

    baseline = prior_baseline(data.y_train, data.y_test)
    return Task(name="digits", seq_len=steps, input_dim=data.x_train.shape[-1], output_dim=NUM_CLASSES,
                readout="last", sample=draw(x_train, y_train), loss=loss, metric=metric, metric_name="accuracy",
                baseline_loss=baseline, solved_threshold=solved_ratio * baseline, length_range=None,
                generalises=False, sample_eval=draw(x_test, y_test))
