"""Recipe validation, canonical bytes and cache keys."""

from __future__ import annotations

import msgspec
import pytest

from audioprep.domain.errors import INVALID_RECIPE, Permanent
from audioprep.domain.recipe import (
    Normalize,
    OutputOptions,
    Recipe,
    RecipeError,
    Trim,
    check_recipe,
    decode_recipe,
    normalized_recipe_bytes,
    render_cache_key,
)


def test_empty_recipe_is_identity_defaults() -> None:
    recipe = decode_recipe(b"{}")
    assert recipe == Recipe()
    assert recipe.speed == 1.0 and recipe.normalize is None and recipe.trim is None


def test_camel_case_fields_decode() -> None:
    raw = (
        b'{"trim":{"startMs":100,"endMs":900},"fadeInMs":10,"fadeOutMs":20,"gainDb":-3.5,'
        b'"normalize":{"targetLufs":-14,"truePeakDb":-1},"speed":1.5,"trimSilence":true,'
        b'"channels":"mono","sampleRate":48000}'
    )
    recipe = decode_recipe(raw)
    assert recipe.trim == Trim(start_ms=100, end_ms=900)
    assert recipe.normalize == Normalize(target_lufs=-14.0, true_peak_db=-1.0)
    assert (recipe.fade_in_ms, recipe.fade_out_ms, recipe.gain_db) == (10, 20, -3.5)
    assert (recipe.speed, recipe.trim_silence, recipe.channels, recipe.sample_rate) == (
        1.5,
        True,
        "mono",
        48000,
    )


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'{"speed": 2.5}', "$.speed"),
        (b'{"speed": 0.4}', "$.speed"),
        (b'{"gainDb": 31}', "$.gainDb"),
        (b'{"fadeInMs": -1}', "$.fadeInMs"),
        (b'{"fadeOutMs": 600001}', "$.fadeOutMs"),
        (b'{"trim": {"startMs": -5}}', "$.trim.startMs"),
        (b'{"normalize": {"targetLufs": -3}}', "$.normalize.targetLufs"),
        (b'{"normalize": {"truePeakDb": 1}}', "$.normalize.truePeakDb"),
        (b'{"channels": "5.1"}', "$.channels"),
        (b'{"sampleRate": 4000}', "$.sampleRate"),
        (b'{"gainDb": "loud"}', "$.gainDb"),
    ],
)
def test_out_of_range_names_the_field(raw: bytes, where: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=rf"at `\{where}`"):
        decode_recipe(raw)


def test_unknown_field_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field `reverb`"):
        decode_recipe(b'{"reverb": 1}')


def test_trim_end_must_follow_start() -> None:
    with pytest.raises(RecipeError) as info:
        decode_recipe(b'{"trim": {"startMs": 500, "endMs": 500}}')
    assert info.value.field == "trim.endMs"
    assert info.value.code == INVALID_RECIPE
    assert isinstance(info.value, Permanent)


def test_sample_rate_must_be_standard() -> None:
    with pytest.raises(RecipeError) as info:
        check_recipe(Recipe(sample_rate=44000))
    assert info.value.field == "sampleRate"


def test_normalized_bytes_drop_defaults_and_sort() -> None:
    a = Recipe(gain_db=3.0, speed=1.0, fade_in_ms=0)
    b = decode_recipe(b'{"speed": 1, "gainDb": 3}')
    assert normalized_recipe_bytes(a) == normalized_recipe_bytes(b) == b'{"gainDb":3}'
    assert normalized_recipe_bytes(Recipe()) == b"{}"
    assert normalized_recipe_bytes(Recipe(normalize=Normalize())) == b'{"normalize":{}}'


def test_cache_key_stable_and_sensitive() -> None:
    recipe = Recipe(trim=Trim(start_ms=10))
    key = render_cache_key("sources/j1/a.wav", recipe, "mp3", None)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == render_cache_key("sources/j1/a.wav", Recipe(trim=Trim(start_ms=10)), "mp3")
    others = {
        render_cache_key("sources/j2/a.wav", recipe, "mp3"),
        render_cache_key("sources/j1/a.wav", Recipe(), "mp3"),
        render_cache_key("sources/j1/a.wav", recipe, "opus"),
        render_cache_key("sources/j1/a.wav", recipe, "mp3", OutputOptions(bitrate=128)),
        render_cache_key("sources/j1/a.wav", recipe, "mp3", renderer_version="1"),
    }
    assert key not in others and len(others) == 5


def test_default_options_hash_like_none() -> None:
    recipe = Recipe()
    assert render_cache_key("k", recipe, "wav", OutputOptions()) == render_cache_key(
        "k", recipe, "wav", None
    )


def test_recipe_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Recipe().speed = 2.0  # type: ignore[misc]
