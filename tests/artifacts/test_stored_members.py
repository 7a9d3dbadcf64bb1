"""Weights are stored, not deflated, when deflate does not pay: the level of each tar member is
decided from a sample spread over the whole file, so a real safetensors layout (JSON header and
small all-zero tensors first, then fp32 matrices that deflate saves ~7 % of) is stored, and the
stored member reads back through modelkiln's own extractor, GNU tar and gzip.

The weights are a real safetensors file (safetensors.numpy, numpy random normal fp32, fixed seed).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelkiln.artifacts.digest import sha256_file
from modelkiln.artifacts.extract import safe_extract
from modelkiln.artifacts.tarball import choose_level, write_tarball


def weights(path: Path, floats: int = 4 << 20, zeros: int = 32 << 10) -> Path:
    """A BERT-like safetensors file: a zero LayerNorm bias (sorted first, as in a real file,
    128 KiB) and one fp32 random normal matrix (16 MiB)."""
    rng = np.random.default_rng(0)
    save_file({"embeddings.LayerNorm.bias": np.zeros(zeros, dtype=np.float32),
               "encoder.layer.0.weight": (rng.standard_normal(floats) * 0.02).astype(np.float32)},
              str(path))
    return path


@pytest.fixture
def bundle(tmp_path: Path) -> list[tuple[str, Path]]:
    src = tmp_path / "src"
    src.mkdir()
    text = src / "tokenizer.json"
    text.write_text(json.dumps({"vocab": {f"word{i}": i for i in range(60_000)}}))
    return [("model.safetensors", weights(src / "model.safetensors")), ("tokenizer.json", text)]


def test_fp32_weights_are_stored_and_text_is_compressed(bundle: list[tuple[str, Path]]) -> None:
    files = dict(bundle)
    w, text = files["model.safetensors"], files["tokenizer.json"]
    assert w.read_bytes()[8:200].startswith(b'{"embeddings.LayerNorm.bias"')  # the real layout
    assert choose_level(w, w.stat().st_size) == 0
    assert text.stat().st_size > 1 << 20 and choose_level(text, text.stat().st_size) == 6


def test_the_stored_member_costs_no_deflate_and_reads_back(tmp_path: Path,
                                                           bundle: list[tuple[str, Path]]) -> None:
    files = dict(bundle)
    size, digest = write_tarball(tmp_path / "a.tar.gz", bundle)
    raw_weights = files["model.safetensors"].stat().st_size
    # stored: the weights cost their own size (plus block headers); deflated they would be ~7 %
    # smaller, and the tokenizer (compressed) is far smaller than its text
    assert size > raw_weights, (size, raw_weights)
    assert size < raw_weights + files["tokenizer.json"].stat().st_size // 2
    # byte-deterministic: the same input bytes make the same decision and the same tarball
    assert write_tarball(tmp_path / "b.tar.gz", list(reversed(bundle))) == (size, digest)
    # modelkiln's extractor (gunzip.py over a stored member, then a compressed one)
    out = tmp_path / "out"
    got = safe_extract(tmp_path / "a.tar.gz", out,
                       sha256s={name: sha256_file(p) for name, p in bundle})
    assert got == ["model.safetensors", "tokenizer.json"]
    for name, p in bundle:
        assert (out / name).read_bytes() == p.read_bytes()
    # and the standard tools
    subprocess.run(["gzip", "-t", str(tmp_path / "a.tar.gz")], check=True)
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "xzf", str(tmp_path / "a.tar.gz"), "-C", str(gnu)], check=True)
    assert (gnu / "model.safetensors").read_bytes() == files["model.safetensors"].read_bytes()


def test_a_file_that_compresses_well_past_its_head_is_still_deflated(tmp_path: Path) -> None:
    """The sample is spread: a random head does not make a mostly-zero file stored."""
    path = tmp_path / "mostly_zero.bin"
    head = np.random.default_rng(1).bytes(512 << 10)
    path.write_bytes(head + bytes(8 << 20))
    assert choose_level(path, path.stat().st_size) != 0
