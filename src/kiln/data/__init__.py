"""kiln.data: turn arrays and files into batches of tensors.

In-memory data (:class:`ArrayDataset`) is served a whole batch at a time by slicing tensors; file sources are
map-style datasets read by DataLoader worker processes. Both go through a loader whose epoch order is a pure
function of ``(seed, epoch)``, so training can resume exactly in the middle of an epoch.
"""

from .arrays import ArrayDataset, as_tensor
from .loader import BatchLoader, DatasetLoader, IterableLoader, Loader, epoch_order, make_loader

__all__ = [
    "ArrayDataset",
    "BatchLoader",
    "DatasetLoader",
    "IterableLoader",
    "Loader",
    "as_tensor",
    "epoch_order",
    "make_loader",
]
