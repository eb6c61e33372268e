"""Lookup tables stored in pieces by home block.

A LUT of one threshold is a folder ``threshold_<t>/`` (``t`` the exact
float, as :func:`blockseg.segments.lut_name` writes it) holding

    piece_<k>.npy   (2, n) uint64: fragment ids sorted (row 0), segment ids (row 1);
                    the fragments with ``k * ids_per_piece <= id < (k + 1) * ids_per_piece``
    index.json      ``{"threshold", "ids_per_piece", "pieces"}``, written last

``ids_per_piece`` is a whole number of blocks' id ranges (``blocks_per_piece
* ids_per_block``), so the fragments of block ``b`` all lie in piece
``b * ids_per_block // ids_per_piece``: a relabel block memory-maps that one
file and reads only its own rows. A LUT written whole (:func:`write_whole`)
is one piece with ``ids_per_piece`` null.

Pieces and the index are written under a temporary name and renamed into
place; the index names the LUT complete, so a crash before it leaves a LUT
that does not exist (the segments stage then computes it afresh). A write
that fails (a full disk) removes its temporary file and raises an OSError
with the errno the system gave and the path of the piece, so the command
can say what went wrong in one line, and the rerun finds nothing of it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np

from blockseg.stage_errors import naming

INDEX = "index.json"


def folder_name(threshold: float) -> str:
    return f"threshold_{float(threshold)!r}"


def _replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through ``write(handle)`` on a temporary file, then rename it into place.

    Raises
    ------
    OSError
        If writing fails; it names ``path`` when the system named no file
        (a full disk fails the write or the close, not the open), and the
        temporary file is gone: a full disk is not left fuller.
    """
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with naming(path):
            with open(temporary, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def _save_npy(handle: BinaryIO, table: np.ndarray) -> None:
    """What ``np.save(handle, table)`` writes, through the file's own ``write``.

    ``np.save`` to a real file hands the data to ``ndarray.tofile``, whose
    short write on a full disk raises ``OSError("N requested and M
    written")`` with no errno: nothing could tell it from any other failure.
    Python's ``write`` raises ``OSError(ENOSPC)`` (or EDQUOT, ...) instead.
    The bytes are np.save's: the version 1.0 header, then the C-order data.
    """
    table = np.ascontiguousarray(table)
    np.lib.format.write_array_header_1_0(handle, np.lib.format.header_data_from_array_1_0(table))
    handle.write(table.reshape(-1).view(np.uint8))  # the buffer itself: no copy


def piece_path(folder: Path, piece: int) -> Path:
    return Path(folder) / f"piece_{int(piece)}.npy"


def write_piece(folder: Path, piece: int, fragment_ids: np.ndarray, segment_ids: np.ndarray) -> Path:
    """Write one piece (rows sorted by fragment id) atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = np.stack([np.asarray(fragment_ids, np.uint64), np.asarray(segment_ids, np.uint64)])
    path = piece_path(folder, piece)
    _replace_atomically(path, lambda handle: _save_npy(handle, table))
    return path


def write_index(folder: Path, threshold: float, ids_per_piece: int | None, pieces: int) -> Path:
    """Declare the LUT complete: every piece ``0 .. pieces - 1`` is written."""
    text = json.dumps({"threshold": float(threshold), "ids_per_piece": ids_per_piece, "pieces": int(pieces)})
    path = Path(folder) / INDEX
    _replace_atomically(path, lambda handle: handle.write(text.encode()))
    return path


def write_whole(folder: Path, threshold: float, fragment_ids: np.ndarray, segment_ids: np.ndarray) -> Path:
    """A LUT computed in one process, as one piece."""
    write_piece(folder, 0, fragment_ids, segment_ids)
    return write_index(folder, threshold, None, 1)


def read_index(index_path: Path) -> dict:
    return json.loads(Path(index_path).read_text())


def _piece_range(index: dict, low: int, high: int) -> range:
    if index["ids_per_piece"] is None:
        return range(index["pieces"])
    size = int(index["ids_per_piece"])
    first = max(0, int(low) // size)
    last = min(index["pieces"] - 1, (int(high) - 1) // size)
    return range(first, last + 1)


def read_range(index_path: Path, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows with ``low <= fragment id < high``, from the pieces that hold them (memory-mapped)."""
    index_path = Path(index_path)
    index = read_index(index_path)
    ids, segments = [], []
    for piece in _piece_range(index, low, high):
        table = np.load(piece_path(index_path.parent, piece), mmap_mode="r")
        start = int(np.searchsorted(table[0], np.uint64(low), side="left"))
        stop = int(np.searchsorted(table[0], np.uint64(high), side="left"))
        ids.append(np.array(table[0, start:stop]))
        segments.append(np.array(table[1, start:stop]))
    if not ids:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    return np.concatenate(ids), np.concatenate(segments)


def read_all(index_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The whole LUT, sorted by fragment id (pieces hold consecutive id ranges)."""
    index_path = Path(index_path)
    index = read_index(index_path)
    tables = [np.load(piece_path(index_path.parent, piece)) for piece in range(index["pieces"])]
    if not tables:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    return np.concatenate([t[0] for t in tables]), np.concatenate([t[1] for t in tables])


def map_ids(index_path: Path, ids: np.ndarray) -> np.ndarray:
    """Segment id of each of ``ids`` (ids not in the LUT keep theirs, 0 stays 0), reading only the pieces needed."""
    ids = np.asarray(ids, np.uint64)
    out = ids.copy()
    if ids.size == 0:
        return out
    index_path = Path(index_path)
    index = read_index(index_path)
    if index["ids_per_piece"] is None:
        pieces = np.zeros(ids.shape, np.int64)
    else:
        # the last piece holds every id beyond the others
        pieces = np.minimum(ids // np.uint64(index["ids_per_piece"]), np.uint64(index["pieces"] - 1)).astype(np.int64)
    for piece in np.unique(pieces):
        table = np.load(piece_path(index_path.parent, piece), mmap_mode="r")
        if table.shape[1] == 0:
            continue
        chosen = pieces == piece
        wanted = ids[chosen]
        position = np.minimum(np.searchsorted(table[0], wanted), table.shape[1] - 1)
        found = np.asarray(table[0][position]) == wanted
        out[chosen] = np.where(found, np.asarray(table[1][position]), wanted)
    return out


def drop(folder: Path) -> None:
    """Remove a LUT: its index first, so a crash halfway leaves no LUT that looks complete."""
    folder = Path(folder)
    (folder / INDEX).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
