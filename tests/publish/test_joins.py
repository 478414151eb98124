"""The intro/outro join on plain arrays: lengths, equal power, no click where parts meet."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from audioprep.services.worker.pipeline.joins import _crossfaded, _curves, match_gain_db
from audioprep.services.worker.pipeline.loudness import Loudness

RATE = 48000


def _sine(seconds: float, freq: float, phase: float = 0.0, amp: float = 0.8) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    one = (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)
    return np.stack([one, one])


def _blocks(pcm: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, pcm.shape[1], size):
        yield pcm[:, i : i + size]


def _max_step(pcm: np.ndarray) -> float:
    return float(np.abs(np.diff(pcm, axis=1)).max())


@pytest.mark.parametrize("block", [1024, 4096, 50_000])
def test_lengths_and_overlap_whatever_the_block_size(block: int) -> None:
    intro = _sine(2.0, 220.0, phase=1.0)
    episode = _sine(5.0, 330.0, phase=2.5)
    outro = _sine(3.0, 440.0)
    used: list[int] = []
    fades = [RATE // 2, RATE]
    parts = [_blocks(p, block) for p in (intro, episode, outro)]
    out = np.concatenate(list(_crossfaded(parts, fades, used)), axis=1)
    assert out.shape[1] == intro.shape[1] + episode.shape[1] + outro.shape[1] - sum(fades)
    assert used == fades
    # outside the overlaps every part is untouched
    np.testing.assert_array_equal(out[:, :RATE], intro[:, :RATE])
    start = intro.shape[1] - fades[0]
    np.testing.assert_array_equal(
        out[:, start + fades[0] : start + episode.shape[1] - fades[1]],
        episode[:, fades[0] : episode.shape[1] - fades[1]],
    )


def test_no_click_where_a_butt_join_clicks() -> None:
    """Sines ending and starting at full swing in opposite directions: a butt join steps by
    ~1.5 full scale; the crossfade stays within what the sines themselves do (equal power can
    add up to √2 of two uncorrelated signals' steps)."""
    a = _sine(1.0, 200.0, phase=np.pi / 2 - 2 * np.pi * 200.0 * (RATE - 1) / RATE)  # ends at +0.8
    b = _sine(1.0, 300.0, phase=-np.pi / 2)  # starts at -0.8
    material = max(_max_step(a), _max_step(b))
    butt = np.concatenate([a, b], axis=1)
    assert _max_step(butt) > 30 * material
    out = np.concatenate(list(_crossfaded([_blocks(a, 1000), _blocks(b, 1000)], [4800], [])), 1)
    assert _max_step(out) <= np.sqrt(2) * material * 1.01


def test_equal_power_curves() -> None:
    fade_out, fade_in = _curves(1000)
    np.testing.assert_allclose(fade_out**2 + fade_in**2, 1.0, atol=1e-6)
    assert fade_out[0] > 0.99 and fade_in[-1] > 0.99 and fade_out[-1] < 0.01


def test_a_part_shorter_than_its_overlap_fades_over_what_there_is() -> None:
    a = _sine(1.0, 200.0)
    b = _sine(0.1, 300.0)  # 4800 samples against an overlap of 9600
    used: list[int] = []
    out = np.concatenate(list(_crossfaded([_blocks(a, 512), _blocks(b, 512)], [9600], used)), 1)
    assert used == [4800]
    assert out.shape[1] == a.shape[1]  # the tail fades out; b lies inside it
    assert abs(out[:, -1]).max() < 0.01


def test_match_gain() -> None:
    episode = Loudness(-18.0, -1.0, None)
    assert match_gain_db(episode, Loudness(-24.5, -6.0, None)) == 6.5
    assert match_gain_db(episode, Loudness(None, None, None)) == 0.0  # silent jingle
    assert match_gain_db(episode, Loudness(-90.0, -60.0, None)) == 30.0  # bounded
