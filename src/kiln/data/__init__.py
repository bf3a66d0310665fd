"""kiln.data: turn arrays and files into batches of tensors.

In-memory data (:class:`ArrayDataset`) is served a whole batch at a time by slicing tensors; file sources are
map-style datasets read by DataLoader worker processes. Both go through a loader whose epoch order is a pure
function of ``(seed, epoch)``, so training can resume exactly in the middle of an epoch.

Sources: :func:`read_csv` (tabular), :class:`ImageFolder`, :func:`read_jsonl` with a :class:`Vocabulary` (text)
and :class:`AudioFolder` (WAV). Batch-level transforms (:class:`Normalize`, :class:`RandomCrop`, ...) run on whole
batches through a dataset's ``batch_transform``. Pillow is imported only when images are read.
"""

from .arrays import ArrayDataset, as_tensor
from .audio import AudioFolder, log_mel_spectrogram, mel_filterbank, read_wav, resample
from .images import ImageFolder
from .loader import BatchLoader, DatasetLoader, IterableLoader, Loader, epoch_order, make_loader
from .tabular import read_csv
from .text import TextDataset, Vocabulary, read_jsonl
from .transforms import Compose, GaussianNoise, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = [
    "ArrayDataset",
    "AudioFolder",
    "BatchLoader",
    "Compose",
    "DatasetLoader",
    "GaussianNoise",
    "ImageFolder",
    "IterableLoader",
    "Loader",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "TextDataset",
    "Vocabulary",
    "as_tensor",
    "epoch_order",
    "log_mel_spectrogram",
    "make_loader",
    "mel_filterbank",
    "read_csv",
    "read_jsonl",
    "read_wav",
    "resample",
]
