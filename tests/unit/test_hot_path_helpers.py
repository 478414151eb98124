"""The hot-path forms of small helpers give exactly what their plain forms give."""

from __future__ import annotations

import os
import random
import string
from pathlib import Path
from unittest import mock

import pytest

from audioprep.shared import ids, keys, names
from audioprep.shared.storage import Storage


def _reference_job_id(ms: int, rand: bytes) -> str:
    """The per-character encoding the ids used to be built with."""
    return ids._b32(ms, 10) + ids._b32(int.from_bytes(rand, "big"), 16)


@pytest.mark.parametrize("ms", [0, 1, 1_764_590_000_000, 2**48 - 1])
def test_new_job_id_matches_the_reference_encoding(ms: int) -> None:
    rng = random.Random(ms)
    for _ in range(200):
        rand = rng.randbytes(10)
        with mock.patch.object(ids, "_random80", return_value=int.from_bytes(rand, "big")):
            got = ids.new_job_id(ms)
        assert got == _reference_job_id(ms, rand)
        assert ids.is_job_id(got)


def test_new_job_ids_sort_by_time() -> None:
    a, b = ids.new_job_id(1_000), ids.new_job_id(1_001)
    assert a < b


def test_random_pool_hands_out_each_value_once_and_not_to_a_forked_child() -> None:
    ids._randoms.clear()
    draws = [ids._random80() for _ in range(3 * ids._RANDOMS_PER_DRAW + 7)]
    assert len(set(draws)) == len(draws) and all(0 <= d < 2**80 for d in draws)
    assert len({ids.new_job_id(5) for _ in range(1000)}) == 1000  # same ms, distinct ids
    left = list(ids._randoms)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first value is fresh, not the parent's next one
        os.write(write, str(ids._random80() in left).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"False"
    assert ids._randoms == left


def _reference_safe_key(key: str) -> bool:
    if not key or key.startswith("/") or len(key) > 1024:
        return False
    if any(ord(ch) < 32 for ch in key):
        return False
    return all(part not in ("", ".", "..") for part in key.split("/"))


def _reference_token_ok(value: str) -> bool:
    return bool(value) and not any(ch in ". *>\t\r\n" for ch in value)


def test_safe_key_and_token_checks_match_the_reference() -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters + "./ *>\t\r\n\x00\x1f\x7f-é"
    samples = ["", "/", ".", "..", "a/../b", "sources/x/a.wav", "a//b", "a\x1fb", "é/ü"]
    for _ in range(5000):
        samples.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))))
    for s in samples:
        assert keys.is_safe_key(s) == _reference_safe_key(s), s
        try:
            names.check_token(s)
            ok = True
        except ValueError:
            ok = False
        assert ok == _reference_token_ok(s), s


async def test_local_exists_matches_path_is_file(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "sources" / "j").mkdir(parents=True)
    (root / "sources" / "j" / "a.wav").write_bytes(b"x")
    (root / "sources" / "j" / "link.wav").symlink_to(root / "sources" / "j" / "a.wav")
    (root / "sources" / "j" / "dangling.wav").symlink_to(root / "nowhere")
    (root / "loop").symlink_to(root / "loop")
    storage = Storage(None, local_root=root, url=root.as_uri())
    samples = ["sources/j/a.wav", "sources/j/a.wav/", "sources//j/a.wav", "sources/./j/a.wav"]
    samples += ["sources/j", "sources/j/", "sources/j/link.wav", "sources/j/dangling.wav"]
    samples += ["loop", "loop/x", "sources/j/a.wav/x", "nope", "", "/", "a\x00b", "é/ü"]
    for key in samples:
        try:
            expected = (root / key).is_file()
        except ValueError:
            expected = False
        assert await storage.exists(key) == expected, key
