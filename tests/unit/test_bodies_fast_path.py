"""The typed one-pass body decoder answers exactly like the reference path (generic parse,
integral floats as ints, strict conversion): same value, or the same problem."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from audioprep.services.api.bodies import decode_json, decode_json_slow
from audioprep.services.api.problems import ProblemError
from audioprep.services.api.schemas import PreviewRequest, SaveRequest, UrlIngestRequest

KEY = "sources/01BENCH0000000000000000000/src.wav"
BODIES: list[Any] = [
    {"sourceKey": KEY, "recipe": {"gainDb": -3}, "format": "wav"},
    {"sourceKey": KEY, "recipe": {"gainDb": -3.0, "fadeInMs": 200.0}, "format": "mp3"},
    {"sourceKey": KEY, "recipe": {"trim": {"startMs": 3.0, "endMs": 2500}}, "format": "flac"},
    {"sourceKey": KEY, "recipe": {"trim": {"startMs": 3.5}}, "format": "flac"},
    {"sourceKey": KEY, "recipe": {"sampleRate": 44100.0, "dehum": 50.0}, "format": "wav"},
    {"sourceKey": KEY, "recipe": {"gainDb": "3"}, "format": "wav"},
    {"sourceKey": KEY, "recipe": {"gainDb": 99}, "format": "wav"},
    {"sourceKey": KEY, "recipe": {"unknown": 1}, "format": "wav"},
    {"sourceKey": KEY, "format": "ogg"},
    {"sourceKey": KEY},
    {"sourceKey": KEY, "format": "wav", "options": {"bitDepth": 24.0}},
    {"sourceKey": KEY, "format": "wav", "metadata": {"title": "x", "track": 3.0}},
    {"sourceKey": KEY, "format": "wav", "chapters": [{"startMs": 0.0, "title": "a"}]},
    {"sourceKey": KEY, "format": "wav", "preset": None},
    {"sourceKey": KEY, "outputs": [{"format": "mp3", "options": {"bitrate": 128.0}}]},
    {"sourceKey": KEY, "outputs": [{"format": "wav"}], "format": "wav"},
    {"sourceKey": "", "format": "wav"},
    {"source": "url", "url": "https://example.com/a.mp3"},
    {"source": "ftp", "url": "x"},
    [],
    "text",
    3,
    None,
]
RAW = [
    b'{"sourceKey": "a", "format": "wav"',
    b'{"sourceKey": "a", "format": "wav"} x',
    b"\xff\xfe",
    b'{"sourceKey": "a", "sourceKey": "b", "format": "wav"}',
    b'{"sourceKey": "a", "recipe": {"gainDb": NaN}, "format": "wav"}',
    b'{"sourceKey": "a", "recipe": {"gainDb": 1e400}, "format": "wav"}',
    b'{"sourceKey": "a", "recipe": {"fadeInMs": 1e2}, "format": "wav"}',
]


def _outcome(raw: bytes, type_: type[Any], decode: Any) -> Any:
    try:
        return ("ok", decode(raw, type_))
    except ProblemError as exc:
        return ("problem", exc.status, exc.code, exc.detail, exc.field)


def _fuzzed(rng: random.Random) -> bytes:
    doc = json.loads(json.dumps(rng.choice(BODIES)))
    if isinstance(doc, dict) and isinstance(doc.get("recipe"), dict):
        for field in ("gainDb", "fadeInMs", "fadeOutMs", "speed", "highpassHz"):
            if rng.random() < 0.3:
                doc["recipe"][field] = rng.choice([0, 1, 1.0, 2.5, -1, "1", None, 300, 30.0])
    return json.dumps(doc).encode()


@pytest.mark.parametrize("type_", [SaveRequest, PreviewRequest, UrlIngestRequest])
def test_fast_path_answers_like_the_reference(type_: type[Any]) -> None:
    rng = random.Random(22)
    corpus = [json.dumps(b).encode() for b in BODIES] + RAW + [_fuzzed(rng) for _ in range(400)]
    for raw in corpus:
        assert _outcome(raw, type_, decode_json) == _outcome(raw, type_, decode_json_slow), raw
