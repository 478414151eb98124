"""Filename sanitising and storage-key safety (no path traversal into storage keys)."""

from __future__ import annotations

import pytest

from audioprep.shared import keys


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("song.mp3", "song.mp3"),
        ("../../../../etc/passwd", "passwd"),
        ("..\\..\\windows\\win.ini", "win.ini"),
        ("/absolute/path/take 1.wav", "take_1.wav"),
        ("..", "audio"),
        (".", "audio"),
        (".hidden", "hidden"),
        ("", "audio"),
        (None, "audio"),
        ("Ünïcødé 音楽 🎵.wav", "Unicde_.wav"),  # ø has no ASCII decomposition
        ("ｆｕｌｌｗｉｄｔｈ.mp3", "fullwidth.mp3"),
        ("evil\u202egnp.wav", "evilgnp.wav"),
        ("a\x00b\tc\r\nd.wav", "a_b_c_d.wav"),
        ("-rf --no-preserve-root", "rf_--no-preserve-root"),
        ("名前", "audio"),
    ],
)
def test_safe_filename(raw: str | None, safe: str) -> None:
    assert keys.safe_filename(raw) == safe


def test_long_names_keep_their_extension() -> None:
    name = keys.safe_filename("x" * 5000 + ".flac")
    assert len(name) == keys.MAX_NAME_CHARS and name.endswith(".flac")
    assert len(keys.safe_filename("y" * 5000)) == keys.MAX_NAME_CHARS


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../x",
        "sources/../../x",
        "sources/./x",
        "sources//x",
        "sources/x/",
        "a\x00b",
        "a\nb",
        "k" * 1025,
    ],
)
def test_unsafe_keys_are_refused(key: str) -> None:
    assert not keys.is_safe_key(key)


def test_keys_are_built_from_safe_parts() -> None:
    assert keys.upload_key("default", "J1", "../../x.wav") == "uploads/J1/x.wav"
    assert keys.prepared_key("tA", "J1", "../a.b.wav", "mp3") == "tenants/tA/prepared/J1/a.b.mp3"
    for bad_tenant in ("a.b", "a b", "*", ">", ""):
        with pytest.raises(ValueError):
            keys.source_key(bad_tenant, "J1", "x.wav")
    with pytest.raises(ValueError):
        keys.source_key("default", "J.1", "x.wav")
