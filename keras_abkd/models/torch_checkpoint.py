"""Read a PyTorch `state_dict` file (`.pth`) into numpy arrays.

With torch installed, `torch.load(..., weights_only=True)` reads the file.
Without torch, a restricted unpickler reads both of PyTorch's formats: the
legacy one (a sequence of pickles followed by the raw storages, written by
torch before 1.6 or with `_use_new_zipfile_serialization=False`) and the zip
archive (`data.pkl` plus one file per storage). The restricted unpickler only
builds ordered dicts and tensors, so it runs no other code from the file.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

# Magic number that starts a legacy (non-zip) torch file.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C

# torch storage class name -> numpy dtype (little-endian, as torch writes it).
STORAGE_DTYPES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    def __init__(self, name):
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage named in the pickle, whose bytes are read afterwards."""

    def __init__(self, dtype, num_elements):
        self.dtype = dtype
        self.num_elements = num_elements
        self.array = None


class _LazyTensor:
    """The arguments of `torch._utils._rebuild_tensor_v2`, resolved later."""

    def __init__(self, storage, offset, shape, strides):
        self.storage = storage
        self.offset = offset
        self.shape = tuple(shape)
        self.strides = tuple(strides)

    def to_numpy(self):
        flat = self.storage.array
        itemsize = flat.dtype.itemsize
        if self.shape:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.strides))
            if min(self.shape) > 0 and last >= flat.size:
                raise ValueError(
                    f"A tensor of shape {self.shape} reads past the end of its "
                    f"storage ({flat.size} elements): the checkpoint is damaged."
                )
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.shape,
            strides=tuple(s * itemsize for s in self.strides),
            writeable=False,
        )
        # torch writes transposed views as they are; callers expect C order.
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, offset, shape, strides, requires_grad=False, *args):
    del requires_grad, args
    return _LazyTensor(storage, offset, shape, strides)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds only ordered dicts and tensors."""

    def __init__(self, file, storages):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return lambda: _StorageType(name)
        raise pickle.UnpicklingError(
            f"The checkpoint refers to {module}.{name}, which this reader does not "
            "build (it reads plain state_dicts of tensors). Install torch to "
            "read it with torch.load."
        )

    def persistent_load(self, persistent_id):
        kind, storage_type, key, _location, num_elements = persistent_id[:5]
        if kind != "storage":
            raise pickle.UnpicklingError(
                f"Invalid checkpoint: unknown persistent id kind {kind!r}."
            )
        if len(persistent_id) > 5 and persistent_id[5] is not None:
            raise pickle.UnpicklingError(
                "The checkpoint uses storage views (a pre-0.4 torch format); "
                "install torch to read it."
            )
        if isinstance(storage_type, _StorageType):
            dtype = storage_type.dtype
        else:
            dtype = storage_type().dtype
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(dtype, num_elements)
        return self._storages[key]


def _resolve(state):
    if not isinstance(state, dict):
        raise TypeError(
            f"The checkpoint contains a {type(state).__name__}, not a state_dict "
            "(a dict of tensor names to tensors)."
        )
    return collections.OrderedDict(
        (name, value.to_numpy() if isinstance(value, _LazyTensor) else value)
        for name, value in state.items()
    )


def _read_legacy(file):
    storages = {}
    magic = pickle.load(file)
    if magic != LEGACY_MAGIC_NUMBER:
        raise ValueError("The file is not a PyTorch checkpoint (wrong magic number).")
    pickle.load(file)  # Protocol version.
    sys_info = pickle.load(file)
    if not sys_info.get("little_endian", True):
        raise ValueError("Big-endian PyTorch checkpoints are not supported.")
    state = _RestrictedUnpickler(file, storages).load()
    storage_keys = pickle.load(file)
    for key in storage_keys:
        storage = storages[str(key)]
        (num_elements,) = struct.unpack("<q", file.read(8))
        num_bytes = num_elements * storage.dtype.itemsize
        data = file.read(num_bytes)
        if len(data) != num_bytes:
            raise ValueError(f"The checkpoint is truncated in storage {key!r}.")
        storage.array = np.frombuffer(data, dtype=storage.dtype)
    return _resolve(state)


def _read_zip(path):
    storages = {}
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint.")
        prefix = pickles[0][: -len("data.pkl")]
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages)
        state = unpickler.load()
        for key, storage in storages.items():
            data = archive.read(f"{prefix}data/{key}")
            storage.array = np.frombuffer(data, dtype=storage.dtype)
    return _resolve(state)


def _read_with_numpy(path):
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    with open(path, "rb") as file:
        return _read_legacy(file)


def _read_with_torch(path):
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return collections.OrderedDict(
        (name, np.ascontiguousarray(value.numpy()) if torch.is_tensor(value) else value)
        for name, value in state.items()
    )


def read_state_dict(path, reader="auto"):
    """Read a PyTorch `state_dict` file into C-contiguous numpy arrays.

    Args:
        path: path of a `.pth` file written by `torch.save(model.state_dict())`.
        reader: `"torch"` reads with `torch.load(weights_only=True)`,
            `"numpy"` with this module's restricted unpickler, and `"auto"`
            (default) with torch when it is installed, else numpy.

    Returns:
        An ordered dict of parameter and buffer names to numpy arrays, in
        the file's order.

    Example:

    >>> weights = read_state_dict("model.pth")  # doctest: +SKIP
    >>> weights["_fc.weight"].shape  # doctest: +SKIP
    (1000, 1280)
    """
    if reader not in ("auto", "torch", "numpy"):
        raise ValueError(f"reader must be 'auto', 'torch' or 'numpy', got {reader!r}.")
    if reader == "auto":
        try:
            import torch  # noqa: F401

            reader = "torch"
        except ImportError:
            reader = "numpy"
    if reader == "torch":
        return _read_with_torch(path)
    return _read_with_numpy(path)
