"""RNNoise for this machine: built once from third_party/rnnoise, else the pyrnnoise wheel's.

The `pyrnnoise` wheel's `librnnoise.so` runs the model with its float ("debug float")
weights and plain C: 0.5 ms per 10 ms frame, bound by reading 11 MB of weights per frame.
Upstream builds by default with int8 weights for the big layers and picks SSE4.1/AVX2 code
at run time (x86 RTCD), about 3× faster here. So at first use we compile the vendored
upstream source (third_party/rnnoise, BSD) with `cc -O3` into a cache directory
(`$XDG_CACHE_HOME/audioprep`, else `~/.cache/audioprep`; reused while the sources and flags
are unchanged), and feed it the wheel's own model: the wheel exports its weight table
(`rnnoise_arrays`), which we write out in the weights-blob format upstream's
`rnnoise_model_from_buffer` parses; no weights are committed or downloaded.

No compiler, a failed build, or a model the vendored code does not accept: the wheel's
library, with one log line. Both answer the same `Rnnoise.frames` call.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger("audioprep.worker.rnnoise")

FRAME = 480
SOURCE_DIR = Path(__file__).resolve().parents[4] / "third_party" / "rnnoise"
_SOURCES = (
    "src/denoise.c",
    "src/rnn.c",
    "src/pitch.c",
    "src/kiss_fft.c",
    "src/celt_lpc.c",
    "src/nnet.c",
    "src/nnet_default.c",
    "src/parse_lpcnet_weights.c",
    "src/rnnoise_tables.c",
    "glue/rnnoise_data.c",
    "glue/batch.c",
)
# upstream's --enable-x86-rtcd: per-file ISA flags; cpuid picks the code at run time
_X86_SOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("src/x86/x86_dnn_map.c", ()),
    ("src/x86/x86cpu.c", ()),
    ("src/x86/nnet_sse4_1.c", ("-msse4.1",)),
    ("src/x86/nnet_avx2.c", ("-mavx", "-mfma", "-mavx2")),
)
_CFLAGS: tuple[str, ...] = (
    "-O3",
    "-fPIC",
    "-fvisibility=hidden",
    "-DRNNOISE_BUILD",
    "-DUSE_WEIGHTS_FILE",  # no compiled-in model: it comes from the wheel at run time
    "-Iinclude",
    "-Isrc",
    "-Iglue",
)
_X86_CFLAGS = ("-DRNN_ENABLE_X86_RTCD", "-DCPU_INFO_BY_C")
BUILD_TIMEOUT_S = 300

_WEIGHT_HEAD = struct.Struct("<4siiii44s")  # nnet.h WeightHead, 64 bytes
_WEIGHT_BLOCK = 64


class _WeightArray(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char_p),
        ("type", ctypes.c_int),
        ("size", ctypes.c_int),
        ("data", ctypes.c_void_p),
    )


_F32 = ctypes.POINTER(ctypes.c_float)
Samples = npt.NDArray[np.float32]


@dataclass(slots=True)
class Rnnoise:
    """A loaded RNNoise: `built` (our SIMD build, batched calls) or the wheel's library."""

    lib: Any
    kind: str  # "built" | "wheel"
    model: int | None = None  # RNNModel* for rnnoise_create (None: the library's own model)
    blob: Any = None  # the weights the model points into: kept alive with it
    _buf: Samples = field(default_factory=lambda: np.zeros(FRAME, dtype=np.float32))

    def create(self) -> int:
        state = self.lib.rnnoise_create(self.model)
        if not state:
            raise RuntimeError("rnnoise_create failed (a model the library does not accept)")
        return int(state)

    def destroy(self, state: int) -> None:
        self.lib.rnnoise_destroy(state)

    def frames(self, state: int, data: Samples, out: Samples, vad: Samples) -> None:
        """Denoise whole frames: `data`/`out` contiguous float32 of n·480 samples in [-1, 1],
        `vad` float32 of n (speech probability per frame)."""
        n = data.shape[0] // FRAME
        for a, length in ((data, n * FRAME), (out, n * FRAME), (vad, n)):
            if a.dtype != np.float32 or not a.flags.c_contiguous or a.shape[0] < length:
                raise ValueError("rnnoise frames: contiguous float32 buffers of n frames")
        if self.kind == "built":
            self.lib.audioprep_rnnoise_frames(
                state, out.ctypes.data_as(_F32), data.ctypes.data_as(_F32), n,
                vad.ctypes.data_as(_F32),
            )  # fmt: skip
            return
        buf, process = self._buf, self.lib.rnnoise_process_frame
        pointer = buf.ctypes.data_as(_F32)
        for i in range(n):
            np.multiply(data[i * FRAME : (i + 1) * FRAME], 32768.0, out=buf)
            vad[i] = process(state, pointer, pointer)
            np.multiply(buf, 1 / 32768.0, out=out[i * FRAME : (i + 1) * FRAME])


def wheel_library_path() -> Path:
    """The pyrnnoise wheel's librnnoise.so, found without importing the package (its
    __init__ pulls in audiolab and tqdm: ~0.2 s)."""
    spec = importlib.util.find_spec("pyrnnoise")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pyrnnoise is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "librnnoise.so"


def _declare(lib: Any, batched: bool) -> None:
    lib.rnnoise_create.argtypes = [ctypes.c_void_p]
    lib.rnnoise_create.restype = ctypes.c_void_p
    lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
    lib.rnnoise_destroy.restype = None
    lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, _F32, _F32]
    lib.rnnoise_process_frame.restype = ctypes.c_float
    if batched:
        lib.rnnoise_model_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.rnnoise_model_from_buffer.restype = ctypes.c_void_p
        lib.audioprep_rnnoise_frames.argtypes = [ctypes.c_void_p, _F32, _F32, ctypes.c_int, _F32]
        lib.audioprep_rnnoise_frames.restype = None


def wheel() -> Rnnoise:
    lib = ctypes.CDLL(str(wheel_library_path()))
    _declare(lib, batched=False)
    return Rnnoise(lib=lib, kind="wheel")


def weights_blob(wheel_lib: Any, *, float_weights: bool = False) -> bytes:
    """The wheel's model (`rnnoise_arrays`) as a weights blob (upstream's write_weights.c
    format: a 64-byte head per array, data padded to 64 bytes). Without `float_weights`, the
    layers that have int8 weights leave out their float copy, so the int8 code runs (what
    upstream builds by default); with them, the float code the wheel runs."""
    first = _WeightArray.in_dll(wheel_lib, "rnnoise_arrays")
    table = ctypes.cast(ctypes.addressof(first), ctypes.POINTER(_WeightArray))
    arrays: list[tuple[str, int, int, int]] = []
    i = 0
    while table[i].name:
        a = table[i]
        arrays.append((a.name.decode(), a.type, a.size, a.data))
        i += 1
    names = {name for name, *_ in arrays}
    parts: list[bytes] = []
    for name, kind, size, data in arrays:
        if (
            not float_weights
            and name.endswith("_weights_float")
            and name.removesuffix("_float") + "_int8" in names
        ):
            continue
        block = (size + _WEIGHT_BLOCK - 1) // _WEIGHT_BLOCK * _WEIGHT_BLOCK
        parts.append(_WEIGHT_HEAD.pack(b"DNNw", 0, kind, size, block, name.encode()))
        parts.append(ctypes.string_at(data, size))
        parts.append(bytes(block - size))
    return b"".join(parts)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "audioprep"


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _plan(source: Path, rtcd: bool) -> list[tuple[str, tuple[str, ...]]]:
    """(source file, compiler flags) per translation unit."""
    units: list[tuple[str, tuple[str, ...]]] = [(s, ()) for s in _SOURCES]
    common = _CFLAGS
    if rtcd:
        units += _X86_SOURCES
        common = (*_CFLAGS, *_X86_CFLAGS)
    return [(str(source / s), (*common, *extra)) for s, extra in units]


def build(
    source: Path = SOURCE_DIR,
    cache: Path | None = None,
    cc: str | None = None,
    *,
    simd: bool = True,
) -> Path:
    """The shared library for these sources and flags: from the cache, else compiled (under
    a lock, so concurrent workers build it once). `simd=False`: plain C, no run-time CPU
    detection (the code the wheel runs; bench/voice.py checks it is bit-exact)."""
    name = cc or os.environ.get("CC") or "cc"
    compiler = shutil.which(name)
    if compiler is None:
        raise RuntimeError(f"no C compiler ({name}) on PATH")
    plan = _plan(source, rtcd=simd and _x86())
    key = hashlib.sha256(f"{compiler}|{platform.machine()}".encode())
    for path, flags in plan:
        key.update(Path(path).read_bytes())
        key.update(" ".join(flags).encode())
    for header in sorted((*source.glob("*/*.h"), *source.glob("src/x86/*.h"))):
        key.update(header.read_bytes())
    target_dir = cache or cache_dir()
    target = target_dir / f"librnnoise-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    with (target_dir / ".rnnoise.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target
        for stale in target_dir.glob("build-*"):  # a builder killed mid-way (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix="build-", dir=target_dir) as tmp:
            objects = []
            for i, (path, flags) in enumerate(plan):
                obj = f"{tmp}/{i}.o"
                _cc([compiler, *flags, "-c", path, "-o", obj], source)
                objects.append(obj)
            _cc([compiler, "-shared", "-o", f"{tmp}/lib.so", *objects, "-lm"], source)
            os.replace(f"{tmp}/lib.so", target)
    return target


def _cc(args: list[str], cwd: Path) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[-3:])}: {done.stderr.strip()[-500:]}")


def built(
    *,
    float_weights: bool = False,
    simd: bool = True,
    cache: Path | None = None,
    cc: str | None = None,
) -> Rnnoise:
    """Our build with the wheel's model; raises RuntimeError when that cannot be had."""
    lib = ctypes.CDLL(str(build(cache=cache, cc=cc, simd=simd)))
    _declare(lib, batched=True)
    wheel_lib = ctypes.CDLL(str(wheel_library_path()))
    raw = weights_blob(wheel_lib, float_weights=float_weights)
    blob = ctypes.create_string_buffer(raw, len(raw))
    model = lib.rnnoise_model_from_buffer(blob, len(raw))
    rnnoise = Rnnoise(lib=lib, kind="built", model=model, blob=blob)
    rnnoise.destroy(rnnoise.create())  # the model's arrays must match the vendored layout
    return rnnoise


LIBRARY_ENV = "AUDIOPREP_RNNOISE"  # "built" (default) or "wheel"
_LOADED: dict[str, Rnnoise] = {}


def choose(library: str = "built") -> Rnnoise:
    """`built`: our build, else (one log line why) the wheel's library; `wheel`: the wheel's."""
    if library == "wheel":
        return wheel()
    try:
        return built()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        log.warning("rnnoise: using the pyrnnoise wheel's library", extra={"error": str(exc)})
        return wheel()


def load() -> Rnnoise:
    """The process's RNNoise, chosen once per `AUDIOPREP_RNNOISE` value."""
    library = "wheel" if os.environ.get(LIBRARY_ENV, "").strip().lower() == "wheel" else "built"
    if library not in _LOADED:
        _LOADED[library] = choose(library)
    return _LOADED[library]
