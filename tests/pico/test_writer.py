"""The streaming safetensors writer: loadable output, a sha256 computed on the way out that matches the file, the
same bytes whether or not the tensors arrive as planned, and background flushing that changes nothing; the adapter
writer every output goes through: all or nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pico.adapters import load_adapters
from pico.output import AdapterWriter, round_sig, round_sig_array, round_sig_rows
from pico.writer import SafetensorsStreamWriter, StreamHash


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


def test_stream_hash_digests_in_order_on_its_thread(monkeypatch):
    monkeypatch.setattr(StreamHash, "DEPTH", 2)  # update blocks while the thread catches up
    rng = np.random.default_rng(0)
    bufs = [rng.integers(0, 256, int(n), dtype=np.uint8) for n in rng.integers(0, 100_000, 50)]
    h = StreamHash(b"header")
    for b in bufs:
        h.update(b)
    assert h.hexdigest() == hashlib.sha256(b"header" + b"".join(b.tobytes() for b in bufs)).hexdigest()
    assert h.hexdigest() == h.hexdigest() and not h._thread.is_alive()
    stopped = StreamHash()
    stopped.update(b"x")
    stopped.stop()
    assert not stopped._thread.is_alive()


def test_a_failed_write_leaves_no_hashing_thread(tmp_path):
    data = tensors()
    plan = [(k, tuple(t.shape)) for k, t in data.items()]
    with pytest.raises(RuntimeError, match="stop"):
        with SafetensorsStreamWriter(tmp_path / "a.safetensors", plan, torch.float32) as writer:
            writer.write(*next(iter(data.items())))
            raise RuntimeError("stop")
    assert writer._hash is None and writer.file.closed


def test_adapter_writer_moves_a_complete_directory_into_place_or_leaves_nothing(adapters, tmp_path):
    aset = load_adapters(adapters)
    modules = aset.modules[:2]
    factors = {m: (torch.randn(aset.shape(m)[0], 3), torch.randn(3, aset.shape(m)[1])) for m in modules}
    plan = [(m, 3, *aset.shape(m)[:2]) for m in modules]
    with pytest.raises(RuntimeError, match="stop"):
        with AdapterWriter(tmp_path / "out", aset, plan) as w:
            w.write(modules[0], *factors[modules[0]])
            raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []  # no output, no temporary directory
    with AdapterWriter(tmp_path / "out", aset, plan) as w:
        for m in modules:
            w.write(m, *factors[m])
        config = w.close()
        w.write_manifest({"output": w.output()})
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_config.json",
                                                                    "adapter_model.safetensors", "merge_manifest.json"]
    out = json.loads((tmp_path / "out" / "merge_manifest.json").read_text())["output"]
    assert out["files"]["adapter_model.safetensors"] == file_sha256(tmp_path / "out" / "adapter_model.safetensors")
    assert out["modules"] == 2 and out["max_rank"] == 3 == config["r"]
    tensors = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert torch.equal(tensors[f"base_model.model.{modules[0]}.lora_B.weight"], factors[modules[0]][0])


def _string_route(values) -> np.ndarray:
    """The manifests' rounding as it was first written: one formatted string per value."""
    return np.array([float(f"{v:.6g}") for v in np.asarray(values, dtype=np.float64).reshape(-1).tolist()])


@pytest.mark.parametrize("case", ["wide", "unit", "decimal_ties", "binary_ties", "powers_of_ten", "bits", "special"])
def test_vectorised_rounding_gives_the_string_routes_bits(case):
    rng = np.random.default_rng(sum(map(ord, case)))
    n = 200_000
    mantissa = rng.integers(1_000_000, 9_999_999, n) // 10 * 10 + 5  # 7 digits ending in 5: decimal ties
    x = {
        "wide": rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n),
        "unit": rng.random(n),
        "decimal_ties": mantissa * 10.0 ** rng.integers(-20, 20, n).astype(float),
        "binary_ties": np.concatenate([mantissa.astype(float), mantissa / 2.0 ** rng.integers(0, 30, n)]),
        "powers_of_ten": np.concatenate([f(10.0 ** np.arange(-30, 30)) for f in
                                         (lambda p: np.nextafter(p, 0), lambda p: p, lambda p: np.nextafter(p, np.inf),
                                          lambda p: -p, lambda p: 0.0 * p, lambda p: -0.0 * p)]),
        "bits": rng.integers(0, 2**63, n, dtype=np.int64).view(np.float64),
        "special": np.array([np.nan, np.inf, -np.inf, 5e-324, 1e-310, np.finfo(np.float64).max, 0.0, -0.0, 1.0]),
    }[case]
    got = round_sig_array(x)
    want = _string_route(x)
    assert got.shape == x.shape
    bad = np.flatnonzero(got.view(np.uint64) != want.view(np.uint64))
    assert bad.size == 0, f"{bad.size} differ, e.g. {x[bad[:3]]} -> {got[bad[:3]]} instead of {want[bad[:3]]}"


def test_round_sig_shapes_and_rows_match_the_per_module_calls():
    x = torch.rand(7, 5, dtype=torch.float64) * 10.0 ** torch.randint(-8, 8, (7, 1))
    assert round_sig_rows(x) == [[float(f"{v:.6g}") for v in row.tolist()] for row in x]
    v = torch.rand(7)  # float32 values are widened first, as before
    assert round_sig_rows(v) == [float(f"{float(t):.6g}") for t in v.double()]
    assert isinstance(round_sig(v[0]), float) and round_sig(v[0]) == float(f"{float(v[0]):.6g}")
    assert json.dumps(round_sig_rows(x)) == json.dumps([[float(f"{v:.6g}") for v in row.tolist()] for row in x])


@pytest.mark.parametrize("cores", [1, 16])
def test_source_hashes_are_the_same_on_one_thread_or_several(adapters, monkeypatch, cores):
    monkeypatch.setattr("os.cpu_count", lambda: cores)  # 16 cores: four hashing threads
    aset = load_adapters(adapters)
    aset.hash_sources()
    for adapter in aset.adapters:
        files = adapter.source.files
        assert len(files) == 2 and files == {n: file_sha256(adapter.source.path / n) for n in files}
