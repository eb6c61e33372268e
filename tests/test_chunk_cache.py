"""The worker's decoded-chunk cache gives exactly what a direct read gives."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from blockseg import chunk_cache


@pytest.fixture(autouse=True)
def fresh_cache():
    chunk_cache.clear()
    yield
    chunk_cache.clear()


@pytest.fixture
def array(tmp_path):
    data = np.random.default_rng(0).random((3, 50, 70, 90), dtype=np.float32)
    arr = zarr.create_array(tmp_path / "a.zarr", shape=data.shape, chunks=(3, 16, 32, 32), dtype="float32")
    arr[:] = data
    return arr, data


def _random_selection(rng, shape):
    selection = [slice(0, shape[0])]
    for n in shape[1:]:
        a = int(rng.integers(0, n - 1))
        b = int(rng.integers(a + 1, n + 1))
        selection.append(slice(a, b))
    return tuple(selection)


def test_reads_equal_direct_reads_in_any_order_with_evictions(array):
    arr, data = array
    chunk_bytes = 3 * 16 * 32 * 32 * 4
    chunk_cache.configure("scope", 40 * chunk_bytes)  # far less than the array: evictions happen
    rng = np.random.default_rng(1)
    for _ in range(60):
        selection = _random_selection(rng, data.shape)
        got = chunk_cache.read(arr, "a", selection)
        if got is None:  # too big for half the cache: the caller reads directly
            continue
        np.testing.assert_array_equal(got, data[selection])
    assert chunk_cache.hits > 0
    assert chunk_cache._bytes <= 40 * chunk_bytes


def test_a_new_scope_never_sees_the_old_scopes_chunks(array):
    arr, data = array
    selection = (slice(0, 3), slice(0, 20), slice(0, 40), slice(0, 40))
    chunk_cache.configure("fragments-run-1")
    chunk_cache.read(arr, "a", selection)
    arr[:] = 0  # rewritten between stages (a restarted stage)
    chunk_cache.configure("fragments-run-2")
    np.testing.assert_array_equal(chunk_cache.read(arr, "a", selection), 0)


def test_without_a_scope_or_too_big_it_declines(array):
    arr, data = array
    whole = (slice(0, 3), slice(0, 50), slice(0, 70), slice(0, 90))
    assert chunk_cache.read(arr, "a", whole) is None
    chunk_cache.configure("scope", 1000)
    assert chunk_cache.read(arr, "a", whole) is None
