"""The streaming safetensors writer: loadable output, a sha256 computed on the way out that matches the file, the
same bytes whether or not the tensors arrive as planned, and background flushing that changes nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from pico.writer import SafetensorsStreamWriter


def tensors():
    g = torch.Generator().manual_seed(0)
    return {"m.0.lora_A.weight": torch.randn(3, 7, generator=g), "m.0.lora_B.weight": torch.randn(5, 3, generator=g),
            "m.1.lora_A.weight": torch.randn(2, 7, generator=g), "m.1.lora_B.weight": torch.randn(5, 2, generator=g)}


def write(path: Path, plan, data) -> SafetensorsStreamWriter:
    with SafetensorsStreamWriter(path, plan, torch.float32) as writer:
        for key, t in data.items():
            writer.write(key, t)
    return writer


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_exact_plan_hashes_on_the_way_out(tmp_path):
    data = tensors()
    writer = write(tmp_path / "a.safetensors", [(k, tuple(t.shape)) for k, t in data.items()], data)
    assert writer.sha256 == file_sha256(tmp_path / "a.safetensors")
    loaded = load_file(tmp_path / "a.safetensors")
    assert list(loaded) == sorted(data) and all(torch.equal(loaded[k], v) for k, v in data.items())


def test_off_plan_rewrites_the_header_and_leaves_hashing_to_the_caller(tmp_path):
    data = tensors()
    planned = [(k, tuple(t.shape)) for k, t in data.items()]
    bound = list(planned)
    bound[2] = ("m.1.lora_A.weight", (3, 7))  # an upper bound: the tensor written has 2 rows
    bound[3] = ("m.1.lora_B.weight", (5, 3))
    writer = write(tmp_path / "b.safetensors", bound, data)
    assert writer.sha256 is None
    loaded = load_file(tmp_path / "b.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in data.items())
    # the reserved header is as long in both cases (same key count and digits): same tensors, same layout
    exact = write(tmp_path / "a.safetensors", planned, data)
    assert exact.header_len == writer.header_len
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_background_flush_keeps_bytes_and_hash(tmp_path, monkeypatch):
    data = tensors()
    plan = [(k, tuple(t.shape)) for k, t in data.items()]
    plain = write(tmp_path / "a.safetensors", plan, data)
    monkeypatch.setattr(SafetensorsStreamWriter, "FLUSH_BYTES", 1)  # an fdatasync after every tensor
    flushed = write(tmp_path / "b.safetensors", plan, data)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert plain.sha256 == flushed.sha256 == file_sha256(tmp_path / "b.safetensors")

