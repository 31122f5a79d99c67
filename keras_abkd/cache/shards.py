"""Shard files of a teacher cache: safetensors files checked on every read.

A shard contains the cache rows `[start, stop)` as these tensors:

- `logits`: `[rows, *positions, k]`, the teacher's top-k logits in
  descending order, in the cache's `logits_dtype`.
- `ids`: `[rows, *positions, k]`, their class ids (`uint16` when the
  classes fit, else `int32`).
- `tail`: float32 `[rows, *positions]`, the tail logit
  `T * logsumexp(z_j / T)` over the classes not in `ids`, `-inf` when there
  are none.
- `weights`: float32 `[rows, *positions]`, only when the teacher's
  preprocessing returned weights (the distilled tokens of a causal LM).
"""

import hashlib
import json
import os

import numpy as np

from keras_abkd.cache.manifest import CacheError
from keras_abkd.cache.manifest import write_atomically

WEIGHTS = "weights"


def _safetensors():
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError(
            'The teacher cache needs safetensors. Install it with: pip install '
            '"keras-abkd[cache]"'
        ) from None
    return safetensors.numpy


def write_shard(path, arrays, index, start):
    """Write one shard atomically and return its manifest entry.

    Args:
        path: File path of the shard.
        arrays: Dict of numpy arrays, see the module docstring.
        index: The shard index, stored in the file's metadata.
        start: Its first row, stored in the file's metadata.

    Returns:
        Dict with the file name, `start`, `rows`, `bytes` and `sha256`.
    """
    metadata = {"index": str(index), "start": str(start)}
    contiguous = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    data = _safetensors().save(contiguous, metadata=metadata)
    write_atomically(path, data)
    return {
        "file": os.path.basename(path),
        "start": int(start),
        "rows": int(len(arrays["logits"])),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _metadata(data, path):
    """Return the `__metadata__` dict of a safetensors file's header."""
    header_size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + header_size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CacheError(f"The shard {path} has an unreadable header.") from None
    return header.get("__metadata__") or {}


def _expected_shapes(manifest, rows):
    positions = tuple(manifest["position_shape"])
    k = manifest["k"]
    shapes = {
        "logits": (rows, *positions, k),
        "ids": (rows, *positions, k),
        "tail": (rows, *positions),
    }
    if manifest["has_weights"]:
        shapes[WEIGHTS] = (rows, *positions)
    return shapes


def read_shard(directory, manifest, index, verify=True):
    """Read and check shard `index` of a cache; return its arrays.

    Args:
        directory: The cache folder.
        manifest: Its `Manifest`.
        index: Shard index.
        verify: Whether to compare the file's SHA-256 with the manifest.

    Returns:
        Dict of numpy arrays, see the module docstring.

    Raises:
        CacheError: if the shard is not finished, its file is missing, or
            its size, checksum, metadata, tensors, shapes, dtypes or ids do
            not match the manifest.
    """
    entry = manifest.shard_entry(index)
    if entry is None:
        raise CacheError(
            f"Shard {index} of the cache in {directory} was never finished. "
            "Run cache_teacher again with the same arguments to complete the "
            "cache."
        )
    path = os.path.join(directory, entry["file"])
    fix = (
        "Run cache_teacher again with the same arguments: it rewrites shards "
        "that fail these checks."
    )
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise CacheError(f"The shard {path} cannot be read ({error}). {fix}") from None
    if len(data) != entry["bytes"]:
        raise CacheError(
            f"The shard {path} has {len(data)} bytes, but the manifest records "
            f"{entry['bytes']}: the file is truncated or was changed. {fix}"
        )
    if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CacheError(
            f"The shard {path} is corrupt: its SHA-256 differs from the one "
            f"recorded in the manifest. {fix}"
        )
    metadata = _metadata(data, path)
    if metadata.get("index") != str(index) or metadata.get("start") != str(entry["start"]):
        raise CacheError(
            f"The shard {path} contains rows from {metadata.get('start')} of shard "
            f"{metadata.get('index')}, but the manifest expects shard {index} "
            f"from row {entry['start']}. {fix}"
        )
    try:
        arrays = _safetensors().load(data)
    except Exception as error:  # safetensors raises its own SafetensorError.
        raise CacheError(f"The shard {path} cannot be parsed ({error}). {fix}") from None

    start, stop = manifest.shard_rows(index)
    check_arrays(arrays, manifest, stop - start, f"The shard {path}")
    return arrays


def check_arrays(arrays, manifest, rows, source):
    """Raise `CacheError` unless `arrays` have the manifest's tensors and shapes.

    Args:
        arrays: Dict of numpy arrays.
        manifest: The cache's `Manifest`.
        rows: Expected number of rows.
        source: Name of the data in the message, such as `"The shard ..."`.
    """
    shapes = _expected_shapes(manifest, rows)
    if set(arrays) != set(shapes):
        raise CacheError(
            f"{source} contains the tensors {sorted(arrays)}, expected "
            f"{sorted(shapes)}."
        )
    dtypes = {
        "logits": manifest["logits_dtype"],
        "ids": manifest["ids_dtype"],
        "tail": "float32",
        WEIGHTS: "float32",
    }
    for name, shape in shapes.items():
        array = arrays[name]
        if tuple(array.shape) != shape or str(array.dtype) != dtypes[name]:
            raise CacheError(
                f"{source} has {name} of shape {tuple(array.shape)} and dtype "
                f"{array.dtype}, expected shape {shape} and dtype {dtypes[name]}."
            )
    ids = arrays["ids"]
    if ids.size and (ids.min() < 0 or ids.max() >= manifest["classes"]):
        raise CacheError(
            f"{source} has class ids in [{ids.min()}, {ids.max()}], outside "
            f"[0, {manifest['classes']})."
        )
    if np.isnan(arrays["logits"]).any() or np.isnan(arrays["tail"]).any():
        raise CacheError(f"{source} contains NaN teacher logits.")
