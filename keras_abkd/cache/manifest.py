"""The manifest of a teacher cache: what was cached, and which shards are done.

`manifest.json` in the cache folder records the teacher, k, the temperature,
the dataset fingerprint, the storage dtypes and one entry per finished shard
with its row range, size and SHA-256. It is rewritten atomically (temporary
file, then rename) after every shard, so it lists only shards whose file was
completely written and renamed into place.
"""

import json
import math
import os

MANIFEST_NAME = "manifest.json"
FORMAT = "keras_abkd.teacher_cache"
FORMAT_VERSION = 1

# Fields that must match between a cache and a request to resume or read it.
# The output fields (classes, position shape, weights) are checked per batch.
RESUME_FIELDS = ("k", "temperature", "logits_dtype", "rows", "fingerprint", "teacher")


class CacheError(ValueError):
    """A teacher cache is missing, incomplete, corrupt or does not match."""


def write_atomically(path, data):
    """Write bytes to `path` through a temporary file and a rename.

    A reader sees either the old file or the complete new one, never a
    partial file, also when the process is killed mid-write.
    """
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def shard_file_name(index, num_shards):
    """Return the file name of shard `index`, such as `shard-00003-of-00010.safetensors`."""
    return f"shard-{index:05d}-of-{num_shards:05d}.safetensors"


class Manifest:
    """The contents of `manifest.json`, with the checks on them.

    Args:
        fields: Dict of the manifest's fields. `shards` maps a shard index
            (as a string, for JSON) to its entry.
    """

    def __init__(self, fields):
        self.fields = fields

    @classmethod
    def create(
        cls,
        teacher,
        k,
        temperature,
        logits_dtype,
        ids_dtype,
        rows,
        fingerprint,
        shard_size,
        classes,
        position_shape,
        has_weights,
    ):
        """Return a new manifest with no finished shard."""
        return cls(
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "teacher": teacher,
                "k": int(k),
                "temperature": float(temperature),
                "logits_dtype": logits_dtype,
                "ids_dtype": ids_dtype,
                "rows": int(rows),
                "fingerprint": fingerprint,
                "shard_size": int(shard_size),
                "num_shards": math.ceil(rows / shard_size),
                "classes": int(classes),
                "position_shape": [int(d) for d in position_shape],
                "has_weights": bool(has_weights),
                "shards": {},
            }
        )

    @classmethod
    def load(cls, directory):
        """Read `directory/manifest.json`, or return None if there is none.

        Raises:
            CacheError: if the file is not a valid manifest of this format.
        """
        path = os.path.join(directory, MANIFEST_NAME)
        if not os.path.exists(path):
            return None
        try:
            with open(path, encoding="utf-8") as file:
                fields = json.load(file)
        except (OSError, json.JSONDecodeError) as error:
            raise CacheError(
                f"The cache manifest {path} cannot be read ({error}). Delete the "
                "folder and write the cache again."
            ) from None
        if not isinstance(fields, dict) or fields.get("format") != FORMAT:
            raise CacheError(
                f"{path} is not a keras_abkd teacher cache manifest. Pass the "
                "folder written by cache_teacher."
            )
        if fields.get("version") != FORMAT_VERSION:
            raise CacheError(
                f"{path} has cache format version {fields.get('version')}, but "
                f"this keras_abkd reads version {FORMAT_VERSION}. Write the "
                "cache again with this version."
            )
        return cls(fields)

    def save(self, directory):
        """Write the manifest atomically to `directory/manifest.json`."""
        text = json.dumps(self.fields, indent=2, sort_keys=True)
        write_atomically(os.path.join(directory, MANIFEST_NAME), text.encode("utf-8"))

    def __getitem__(self, key):
        return self.fields[key]

    @property
    def num_shards(self):
        return self.fields["num_shards"]

    def shard_rows(self, index):
        """Return the `(start, stop)` rows of shard `index`."""
        start = index * self.fields["shard_size"]
        return start, min(start + self.fields["shard_size"], self.fields["rows"])

    def shard_entry(self, index):
        """Return the entry of a finished shard, or None."""
        return self.fields["shards"].get(str(index))

    def set_shard_entry(self, index, entry):
        self.fields["shards"][str(index)] = entry

    def remove_shard_entry(self, index):
        self.fields["shards"].pop(str(index), None)

    @property
    def finished_shards(self):
        return len(self.fields["shards"])

    @property
    def complete(self):
        return self.finished_shards == self.num_shards

    def check_matches(self, directory, expected):
        """Raise `CacheError` unless the `RESUME_FIELDS` in `expected` match.

        Args:
            directory: The cache folder, for the message.
            expected: Dict with some of the `RESUME_FIELDS`.
        """
        for key in RESUME_FIELDS:
            if key not in expected:
                continue
            cached = self.fields[key]
            if cached != expected[key]:
                raise CacheError(
                    f"The cache in {directory} was written with {key}={cached!r}, "
                    f"but {key}={expected[key]!r} was given. Pass the same "
                    "settings, teacher and dataset (in the same order) to use "
                    "it, or write to a new folder."
                )
