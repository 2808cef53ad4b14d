"""Depth pruning: which layers to drop, as 0-based global layer indices (PP-safe).

Three selectors (algorithms.md §4):

* ``block_loss`` ([M2]): remove each contiguous block of ``n`` layers that excludes the last layer and
  keep the removal with the lowest validation loss (``L − n`` evaluations);
* ``layer_loss`` ([M1] PPL): remove layers one at a time, drop the ``n`` whose removal hurts least;
* ``cosine`` (ShortGPT block importance, ModelOpt): drop the ``n`` layers with the lowest
  ``1 − cos(input, output)``; needs only the calibration pass.
"""

from __future__ import annotations

import torch

from nemo_minitron.prune.ranking import best_block, layers_to_drop


def block_candidates(num_layers: int, block: int) -> list[list[int]]:
    """Every contiguous block of ``block`` 0-based layer indices that does not contain the last layer."""
    if not 0 < block < num_layers:
        raise ValueError(f"cannot drop a block of {block} from {num_layers} layers")
    return [list(range(s, s + block)) for s in range(0, num_layers - block)]


#: The layer selectors of :func:`select_drop` (``prune.depth_method``); validation reads them from here.
DEPTH_METHODS = ("block_loss", "layer_loss", "cosine")


def select_drop(method: str, num_layers: int, target_layers: int, layer_cosine: dict[int, float],
                layer_loss: dict[int, float] | None = None,
                block_loss: dict[int, float] | None = None) -> list[int]:
    """0-based layers to drop so that ``target_layers`` remain, by ``method``.

    Higher layer scores mean more important: for the loss selectors the score is the loss with the layer
    removed (a bigger loss means the layer matters more).
    """
    if method not in DEPTH_METHODS:
        raise ValueError(f"depth method {method!r} must be one of {list(DEPTH_METHODS)}")
    n_drop = num_layers - target_layers
    if n_drop == 0:
        return []
    if method == "block_loss":
        if block_loss is None:
            raise ValueError("block_loss selector needs block removal losses")
        return best_block(block_loss, n_drop)
    if method == "layer_loss":
        if not layer_loss:
            raise ValueError("layer_loss selector needs single-layer removal losses")
        scores = torch.tensor([layer_loss[n] for n in range(num_layers)], dtype=torch.float64)
    else:
        scores = torch.tensor([layer_cosine[n] for n in range(num_layers)], dtype=torch.float64)
    return layers_to_drop(scores, target_layers)


def kept_layers(num_layers: int, drop: list[int]) -> list[int]:
    """0-based indices of the layers that remain, in their original order."""
    gone = set(drop)
    return [i for i in range(num_layers) if i not in gone]
