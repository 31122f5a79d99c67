"""`ResultsFile`: the JSON lines file of a sweep, one row per finished run.

The first line is a header with the sweep's configuration and its
fingerprint. Each later line is one finished run, written whole and flushed
to disk when its run ends. A sweep killed at any point therefore loses at
most the run in progress. A truncated last line, left by a kill during the
write, is dropped when the file is opened again.
"""

import datetime
import hashlib
import json
import logging
import os
import pathlib

try:
    import fcntl
except ImportError:  # Not on Windows; the file is then not locked.
    fcntl = None

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class ConfigMismatchError(ValueError):
    """Raised when a results file was written by a sweep with other settings."""


class ResultsFileLockedError(RuntimeError):
    """Raised when another process has the results file open for writing."""


def fingerprint(config):
    """Return a short SHA-256 of the JSON-able dict `config`, whatever its key order."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def run_key(row):
    """Return the identity of a run row: `(kind, alpha, beta, seed)`."""
    return (row["kind"], row["alpha"], row["beta"], row["seed"])


def _parse_lines(path, text):
    """Parse the complete lines of `text` into (header, rows, their length in bytes)."""
    complete = text.rfind(b"\n") + 1
    if complete < len(text):
        logger.warning(
            "Dropping an incomplete last line of %s (%d bytes), left by an "
            "interrupted write.",
            path,
            len(text) - complete,
        )
    header, rows = None, []
    for number, line in enumerate(text[:complete].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{path}, line {number}, is not valid JSON ({error.msg}). Fix or "
                "delete that line, or start a new results file."
            ) from None
        kind = record.get("type") if isinstance(record, dict) else None
        if number == 1 and kind == "header":
            header = record
        elif kind in ("run", "prepared"):
            rows.append(record)
        else:
            raise ValueError(
                f"{path}, line {number}, is not a sweep record (expected a header "
                "on line 1, then rows of type 'run' or 'prepared')."
            )
    if rows and header is None:
        raise ValueError(
            f"{path} has no header line, so it is not a sweep results file."
        )
    return header, rows, complete


def read_results(path):
    """Read a results file written by `ResultsFile`.

    Args:
        path: Path of the JSON lines file.

    Returns:
        `(header, runs, prepared)`: the header dict, the list of run rows
        and the list of `prepared` rows (facts about the task, one per
        start of the sweep), in file order.

    Raises:
        FileNotFoundError: when `path` does not exist.
        ValueError: when the file is empty or not a sweep results file.
    """
    path = pathlib.Path(path)
    header, rows, _ = _parse_lines(path, path.read_bytes())
    if header is None:
        raise ValueError(f"{path} is empty: no sweep has finished writing its header.")
    config = header.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("metrics"), dict):
        raise ValueError(
            f"The header of {path} has no sweep configuration with metrics, so "
            "the file was not written by keras-abkd sweep."
        )
    runs = [row for row in rows if row["type"] == "run"]
    prepared = [row for row in rows if row["type"] == "prepared"]
    return header, runs, prepared


def _describe_difference(expected, found):
    differences = []
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            differences.append(
                f"{key}: {found.get(key, '(missing)')!r} in the file, "
                f"{expected.get(key, '(missing)')!r} now"
            )
    return "; ".join(differences)


class ResultsFile:
    """Append-only JSON lines file of one sweep, locked while it is open.

    Opening creates the file with a header for `config`, or checks that the
    header of an existing file has the same fingerprint, so that a resumed
    sweep never mixes runs made with different settings.

    Args:
        path: Path of the JSON lines file. Missing folders are created.
        config: JSON-able dict of every setting that changes a run's
            results.
        metadata: Optional JSON-able dict stored in a new file's header
            but not compared on resume, such as library versions.

    Raises:
        ConfigMismatchError: when the file was written with another config.
        ResultsFileLockedError: when another process has the file open for
            writing.

    Example:

    ```python
    with ResultsFile("runs.jsonl", {"task": "digits"}) as results:
        finished = {run_key(row) for row in results.runs}
        results.append({"kind": "abkd", "alpha": 1.0, "beta": 0.5, "seed": 0,
                        "metrics": {"val_accuracy": 91.0}, "seconds": 3.2})
    ```
    """

    def __init__(self, path, config, metadata=None):
        self.path = pathlib.Path(path)
        self.config = config
        self.metadata = dict(metadata or {})
        self.fingerprint = fingerprint(config)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")
        try:
            self._lock()
            self.runs = self._load_or_create()
        except BaseException:
            self._file.close()
            raise

    def _lock(self):
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResultsFileLockedError(
                f"{self.path} is open in another sweep. Wait for it to finish, "
                "or write to another --output file."
            ) from None

    def _load_or_create(self):
        self._file.seek(0)
        header, rows, complete = _parse_lines(self.path, self._file.read())
        self._file.truncate(complete)

        if header is None:
            self._file.truncate(0)
            self._write(
                {
                    "type": "header",
                    "format": FORMAT_VERSION,
                    "fingerprint": self.fingerprint,
                    "config": self.config,
                    "metadata": self.metadata,
                }
            )
            return []

        if header.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{self.path} has results format {header.get('format')!r}, this "
                f"version writes format {FORMAT_VERSION}. Start a new results file."
            )
        if header.get("fingerprint") != self.fingerprint:
            raise ConfigMismatchError(
                f"{self.path} was written by a sweep with other settings "
                f"({_describe_difference(self.config, header.get('config', {}))}). "
                "Rerun with the file's settings to resume it, or give another "
                "--output file for the new settings."
            )
        return [row for row in rows if row["type"] == "run"]

    def _write(self, record):
        line = json.dumps(record, sort_keys=False) + "\n"
        self._file.write(line.encode())
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, row, record_type="run"):
        """Write one row and flush it to disk.

        Args:
            row: JSON-able dict. A `run` row needs `kind`, `alpha`, `beta`
                and `seed`.
            record_type: `"run"` for a finished run or `"prepared"` for
                facts about the prepared task. Defaults to `"run"`.
        """
        record = {"type": record_type, **row}
        record["written_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        )
        self._write(record)
        if record_type == "run":
            self.runs.append(record)

    def close(self):
        """Release the lock and close the file."""
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
