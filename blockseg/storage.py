"""Where arrays live: local folders, ``file://`` URLs and object stores (``s3://``).

A container URL is either a local path (``/data/run.zarr``, ``run.zarr``), a
``file://`` URL, or a URL fsspec knows (``s3://bucket/path/run.zarr``). Remote
URLs are opened with the *storage options* of their protocol (endpoint URL,
profile, timeouts), which a run registers once in the driver and, through a
worker plugin, in every dask worker: block functions receive only URLs and
open the store themselves, so no array data passes through the scheduler.

Credentials are never part of the options: they come from the environment
(``AWS_ACCESS_KEY_ID`` ...) or a named profile, so no config, log or output
can contain them.

Only volumes go to object storage. The graph store, the lookup tables, logs
and scores stay in the run's local output folder (SQLite and memory-mapped
LUTs need a filesystem).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

try:  # a plain Python class when distributed is older or absent (workers only need the registry)
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover
    WorkerPlugin = object  # type: ignore[misc,assignment]


class StorageError(ValueError):
    """A storage URL cannot be used; the message is one line naming the URL."""


# Option keys that hold credentials: refused in configs so they cannot leak
# into logs, run metadata or the fingerprints stored with the outputs.
SECRET_KEYS = frozenset(
    {"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key", "aws_session_token"}
)

# Fail within seconds on a wrong endpoint instead of botocore's minute of
# retries; generous read timeouts keep slow but working stores usable.
DEFAULT_S3_OPTIONS: dict[str, Any] = {
    "config_kwargs": {"connect_timeout": 2, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}},
}

_OPTIONS: dict[str, dict[str, Any]] = {}


def split_protocol(url: str | Path) -> tuple[str, str]:
    """``("s3", "bucket/key")`` for a URL, ``("file", "/abs/path")`` for a local path or ``file://`` URL.

    Examples
    --------
    >>> split_protocol("s3://bucket/run.zarr")
    ('s3', 'bucket/run.zarr')
    >>> split_protocol("file:///data/run.zarr")
    ('file', '/data/run.zarr')
    """
    text = str(url)
    protocol, sep, rest = text.partition("://")
    if not sep:
        return "file", text
    protocol = protocol.lower()
    if protocol == "file":
        return "file", rest
    if "@" in rest.split("/", 1)[0]:
        # s3://KEY:SECRET@bucket/... would put credentials into every log line
        raise StorageError(f"{protocol}://...: credentials in a URL are not allowed; use the environment or a profile")
    return protocol, rest


def is_remote(url: str | Path) -> bool:
    """Whether ``url`` names an object store rather than the local filesystem."""
    return split_protocol(url)[0] != "file"


def local_path(url: str | Path) -> Path:
    """The filesystem path of a local path or ``file://`` URL."""
    protocol, path = split_protocol(url)
    if protocol != "file":
        raise StorageError(f"{url}: not a local path")
    return Path(path)


def find_secrets(options: Any, where: str = "") -> list[str]:
    """The dotted keys of ``options`` that would hold credentials."""
    found = []
    if isinstance(options, Mapping):
        for key, value in options.items():
            name = f"{where}.{key}" if where else str(key)
            if str(key).lower() in SECRET_KEYS:
                found.append(name)
            found += find_secrets(value, name)
    return found


def _merged(defaults: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(defaults))
    for key, value in options.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_storage_options(protocol: str, options: Mapping[str, Any] | None) -> None:
    """Use ``options`` for every ``protocol://`` URL opened in this process.

    Raises
    ------
    StorageError
        If the options hold a credential.
    """
    secrets = find_secrets(options or {})
    if secrets:
        raise StorageError(
            f"storage options {', '.join(secrets)}: credentials are not accepted here; "
            f"set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment or name a profile"
        )
    _OPTIONS[protocol] = dict(options or {})


def storage_options(url: str | Path) -> dict[str, Any]:
    """The fsspec options to open ``url`` with (defaults plus what was registered)."""
    protocol, _ = split_protocol(url)
    defaults = DEFAULT_S3_OPTIONS if protocol in ("s3", "s3a") else {}
    return _merged(defaults, _OPTIONS.get(protocol, {}))


def describe_endpoint(url: str | Path) -> str:
    """Where ``url`` goes, for error messages (never includes credentials)."""
    options = storage_options(url)
    endpoint = options.get("endpoint_url") or options.get("client_kwargs", {}).get("endpoint_url")
    return f" at {endpoint}" if endpoint else ""


class StorageOptionsPlugin(WorkerPlugin):
    """Registers the driver's storage options in each dask worker (also in workers that join later).

    The options carry no credentials (see :func:`set_storage_options`), so
    sending them through the scheduler exposes nothing.
    """

    name = "blockseg-storage-options"

    def __init__(self, options: Mapping[str, Mapping[str, Any]]):
        self.options = {protocol: dict(value) for protocol, value in options.items()}

    def setup(self, worker=None) -> None:
        for protocol, value in self.options.items():
            set_storage_options(protocol, value)


def install_on_workers(client) -> None:
    """Send this process's storage options to every worker of ``client``."""
    if _OPTIONS:
        client.register_plugin(StorageOptionsPlugin(_OPTIONS), name=StorageOptionsPlugin.name)


def filesystem(url: str | Path):
    """An fsspec filesystem and the path on it for ``url``."""
    import fsspec

    protocol, path = split_protocol(url)
    if protocol == "file":
        return fsspec.filesystem("file"), str(Path(path).absolute())
    try:
        fs = fsspec.filesystem(protocol, **storage_options(url))
    except (ImportError, ValueError) as error:
        raise StorageError(f"{url}: cannot open {protocol}:// storage ({error})") from None
    return fs, path


def zarr_store(url: str | Path, read_only: bool = False):
    """A zarr v3 store for the container at ``url``."""
    from zarr.storage import FsspecStore, LocalStore

    protocol, path = split_protocol(url)
    if protocol == "file":
        return LocalStore(path, read_only=read_only)
    try:
        return FsspecStore.from_url(str(url), storage_options=storage_options(url), read_only=read_only)
    except (ImportError, ValueError, TypeError) as error:
        raise StorageError(f"{url}: cannot open {protocol}:// storage ({error})") from None


def explain(url: str | Path, error: BaseException) -> str:
    """One line saying why ``url`` could not be used (a missing bucket, an unreachable endpoint ...)."""
    name = type(error).__name__
    text = str(error).splitlines()[0] if str(error) else name
    where = describe_endpoint(url)
    if "EndpointConnectionError" in name or "ConnectTimeout" in name or "ConnectionError" in name:
        return f"{url}: cannot reach the storage endpoint{where} ({text})"
    if "NoCredentials" in name:
        return (
            f"{url}: no credentials found; set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, name a profile "
            f"in storage.options, or set anon: true for a public bucket"
        )
    if isinstance(error, PermissionError) or "AccessDenied" in text or "Forbidden" in text:
        return f"{url}: access denied{where}; check the credentials in the environment or profile"
    if isinstance(error, FileNotFoundError):
        return f"{url}: not found{where} ({text})"
    return f"{url}: storage error{where} ({name}: {text})"


def check_container(url: str | Path) -> None:
    """Make sure a container can be written before any block runs.

    A local container's parent folder is created; for an object store the
    bucket must exist (buckets are never created: that is an account-level
    decision) and the endpoint must answer.

    Raises
    ------
    StorageError
        With one line naming the URL and the problem.
    """
    protocol, path = split_protocol(url)
    if protocol == "file":
        target = Path(path)
        if target.exists() and not target.is_dir():
            raise StorageError(f"{url}: exists and is not a folder")
        return
    bucket = path.split("/", 1)[0]
    if not bucket:
        raise StorageError(f"{url}: no bucket in the URL (expected {protocol}://bucket/path/container.zarr)")
    fs, _ = filesystem(url)
    try:
        fs.ls(bucket, refresh=True)
    except FileNotFoundError:
        raise StorageError(f"{url}: bucket '{bucket}' does not exist{describe_endpoint(url)}") from None
    except Exception as error:  # botocore raises many kinds; all mean the same to the user
        raise StorageError(explain(url, error)) from None


def remove(url: str | Path) -> None:
    """Delete a dataset folder (or key prefix) if it exists."""
    import shutil

    protocol, path = split_protocol(url)
    if protocol == "file":
        if Path(path).exists():
            shutil.rmtree(path)
        return
    fs, path = filesystem(url)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
