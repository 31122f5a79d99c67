"""In-memory datasets of a teacher cache: row counts, slices and fingerprints.

A dataset is a numpy array (or anything `np.asarray` accepts), a list of
strings, or a dict or tuple of those, with one row per example along the
first axis. Its fingerprint is a SHA-256 over the structure, dtypes, shapes
and bytes, so a cache can tell whether it was written for the same inputs in
the same order.
"""

import hashlib

import numpy as np


def _is_string_list(value):
    return isinstance(value, list) and all(isinstance(v, (str, bytes)) for v in value)


def _leaves(data, path="data"):
    """Yield `(path, leaf)` for every array or string list, dict keys sorted."""
    if isinstance(data, dict):
        for key in sorted(data):
            if not isinstance(key, str):
                raise ValueError(
                    f"Dataset dict keys must be strings, got {key!r} in {path}."
                )
            yield from _leaves(data[key], f"{path}[{key!r}]")
    elif isinstance(data, tuple):
        for index, value in enumerate(data):
            yield from _leaves(value, f"{path}[{index}]")
    elif _is_string_list(data):
        yield path, data
    else:
        try:
            array = np.asarray(data)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{path} is not an array, a list of strings, or a dict or tuple "
                f"of them: {type(data).__name__} ({error})."
            ) from None
        if array.dtype == object or array.ndim == 0:
            raise ValueError(
                f"{path} must be a numeric array with one row per example or "
                f"a list of strings, got dtype {array.dtype} and shape "
                f"{array.shape}."
            )
        yield path, array


def count_rows(data):
    """Return the number of examples in `data`, or raise if the leaves differ."""
    sizes = {path: len(leaf) for path, leaf in _leaves(data)}
    if not sizes:
        raise ValueError("The dataset contains no arrays.")
    if len(set(sizes.values())) != 1:
        raise ValueError(
            "Every input of the dataset must have the same number of rows, "
            f"got {sizes}."
        )
    return next(iter(sizes.values()))


def take_rows(data, indices):
    """Select rows of `data` by a slice or an index array, keeping its structure."""
    if isinstance(data, dict):
        return {key: take_rows(value, indices) for key, value in data.items()}
    if isinstance(data, tuple):
        return tuple(take_rows(value, indices) for value in data)
    if _is_string_list(data):
        if isinstance(indices, slice):
            return data[indices]
        return [data[i] for i in indices]
    return np.asarray(data)[indices]


def fingerprint(data):
    """Return the SHA-256 fingerprint of `data` as `"sha256:<hex>"`.

    Two datasets share a fingerprint only if they have the same structure,
    dtypes, shapes and values, in the same order. Strings are hashed as
    UTF-8.

    Args:
        data: An array, a list of strings, or a dict or tuple of them.

    Returns:
        A string such as `"sha256:9f86d0..."`.
    """
    digest = hashlib.sha256()
    for path, leaf in _leaves(data):
        digest.update(path.encode("utf-8"))
        if isinstance(leaf, list):
            digest.update(f"strings:{len(leaf)}".encode("utf-8"))
            for value in leaf:
                encoded = value if isinstance(value, bytes) else value.encode("utf-8")
                digest.update(len(encoded).to_bytes(8, "little"))
                digest.update(encoded)
        else:
            array = np.ascontiguousarray(leaf)
            digest.update(f"{array.dtype.str}:{array.shape}".encode("utf-8"))
            digest.update(array.reshape(-1).view(np.uint8))
    return "sha256:" + digest.hexdigest()


def load_data_file(path, keys=None):
    """Load a dataset file for `cache_teacher` and `CachedTargets`.

    - `.npy`: one array.
    - `.npz`: the arrays named in `keys`, or every array. One array is
      returned as it is, several as a dict by name.
    - `.txt`: one example per line, as a list of strings, for causal LM
      teachers. Line ends are removed and empty lines skipped.

    Args:
        path: Path of the file.
        keys: Optional list of array names to read from an `.npz` file.

    Returns:
        An array, a dict of arrays, or a list of strings.
    """
    path = str(path)
    extension = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if keys is not None and extension != "npz":
        raise ValueError(f"keys select arrays of an .npz file, but {path} is not one.")
    if extension == "npy":
        return np.load(path, allow_pickle=False)
    if extension == "npz":
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files) if keys is None else list(keys)
            missing = [name for name in names if name not in archive.files]
            if missing:
                raise ValueError(
                    f"{path} has no arrays named {missing}. It contains "
                    f"{sorted(archive.files)}."
                )
            arrays = {name: archive[name] for name in names}
        if len(arrays) == 1:
            return next(iter(arrays.values()))
        return arrays
    if extension == "txt":
        with open(path, encoding="utf-8") as file:
            lines = [line.rstrip("\r\n") for line in file]
        return [line for line in lines if line.strip()]
    raise ValueError(
        f"Unsupported dataset file {path}. Pass a .npy or .npz file of "
        "inputs, or a .txt file with one text per line."
    )
