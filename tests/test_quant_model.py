"""Quantized models: the tiny reference model with its large matrices and tables quantized,
logits close to float (bounds below), the quantized directory round trip through
``load_model_dir`` and ``hierarchos quantize`` / ``hierarchos generate``."""

from __future__ import annotations

import json
import shutil

import hierarchos_cli.main as cli_main
import jax
import numpy as np
import pytest
from flax import nnx

from hierarchos_jax.io.model_dir import ModelDirError, load_model_dir
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.run import Runner
from hierarchos_jax.quant.gguf_export import GGUF_FILE
from hierarchos_jax.quant.layers import QuantizedEmbed, QuantizedLinear
from hierarchos_jax.quant.model import (
    model_qtype,
    module_at,
    quantize_model,
    quantized_paths,
    requantize_model,
)
from hierarchos_jax.quant.model_dir import MANIFEST, WEIGHTS, save_quantized_dir

pytest.importorskip("hierarchos_jax._quant")

IDS = np.array([[5, 17, 300, 2, 44, 9, 100, 7, 61, 250, 3, 8]])
# Max |logit - float logit| over the 12 positions (float logits reach ~2.1 in magnitude).
# Measured on this model: Q8_0 0.024, Q4_0 0.45.
BOUNDS = {"Q8_0": 0.06, "Q4_0": 0.8}


@pytest.fixture(scope="module")
def tiny_dir(reference_case_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "tiny"
    shutil.copytree(reference_case_dir / "model", out)
    for p in [out, *out.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return out


def logits(model):
    runner = Runner(model)
    with jax.default_matmul_precision("highest"):
        res, _ = runner(IDS, runner.init_carry(1), mode=RunMode.eval(logit_parity=True))
    return np.asarray(res.logits)


@pytest.fixture(scope="module")
def float_logits(tiny_dir):
    return logits(load_model_dir(tiny_dir).model)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_quantized_model_logits_close_to_float(tiny_dir, float_logits, qtype, tmp_path):
    model = load_model_dir(tiny_dir).model
    float_table = np.asarray(model.tok_emb.embedding[...])
    quantize_model(model, qtype)
    assert model_qtype(model) == qtype
    for path in quantized_paths(model.config):
        assert isinstance(module_at(model, path), (QuantizedLinear, QuantizedEmbed)), path
    assert isinstance(model.qproj, nnx.Linear) and isinstance(model.h_halt_proj, nnx.Linear)  # kept float
    rel = np.linalg.norm(np.asarray(model.tok_emb.embedding) - float_table) / np.linalg.norm(float_table)
    assert rel < (0.01 if qtype == "Q8_0" else 0.15)
    got = logits(model)
    err = np.abs(got - float_logits).max()
    assert err < BOUNDS[qtype], err
    if qtype == "Q8_0":
        assert (got.argmax(-1) == float_logits.argmax(-1)).mean() >= 0.9

    # directory round trip: same logits bit for bit, tied head stored once, smaller on disk
    out = save_quantized_dir(model, tmp_path / "q", tokenizer_dir=tiny_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["qtype"] == qtype and manifest["version"] == 2 and "lm_head.weight" not in manifest["tensors"]
    assert manifest["tensors"]["tok_emb.weight"]["kind"] == "embedding"
    loaded = load_model_dir(out)
    assert isinstance(loaded.model.h_rnn.key, QuantizedLinear)
    np.testing.assert_array_equal(logits(loaded.model), got)
    assert (out / WEIGHTS).stat().st_size < (tiny_dir / "hierarchos.pt").stat().st_size / 2


def test_requantize_follows_the_float_model(tiny_dir):
    float_model = load_model_dir(tiny_dir).model
    model = quantize_model(load_model_dir(tiny_dir).model, "Q8_0")
    # "online learning" changed some float weights: a quantized and a kept-float one
    float_model.h_rnn.key.kernel.set_value(float_model.h_rnn.key.kernel[...] * 2)
    float_model.out_norm_bias.set_value(float_model.out_norm_bias[...] + 0.5)
    requantize_model(model, float_model=float_model)
    assert model_qtype(model) == "Q8_0"
    np.testing.assert_array_equal(np.asarray(model.out_norm_bias[...]), np.asarray(float_model.out_norm_bias[...]))
    w = np.asarray(float_model.h_rnn.key.kernel[...])
    assert np.abs(np.asarray(model.h_rnn.key.kernel) - w).max() < 0.01 * np.abs(w).max()
    requantize_model(model, "Q4_0")  # change of format
    assert model_qtype(model) == "Q4_0" and model.tok_emb.qtype == "Q4_0"


def test_reference_layouts_round_trip_and_are_not_exported_to_gguf(tiny_dir, tmp_path):
    """A directory in a reference layout (REF_Q8_0) saves and loads byte for byte; asking for
    a .gguf of it is refused in one line before anything is written."""
    model = quantize_model(load_model_dir(tiny_dir).model, "REF_Q8_0")
    with pytest.raises(ValueError, match="REF_Q8_0 has no GGUF equivalent"):
        save_quantized_dir(model, tmp_path / "g", gguf=True)
    assert not list(tmp_path.iterdir())
    out = save_quantized_dir(model, tmp_path / "r")
    assert json.loads((out / MANIFEST).read_text())["qtype"] == "REF_Q8_0"
    loaded = load_model_dir(out).model
    assert model_qtype(loaded) == "REF_Q8_0"
    for path in quantized_paths(model.config):
        np.testing.assert_array_equal(np.asarray(module_at(loaded, path).packed[...]),
                                      np.asarray(module_at(model, path).packed[...]))


def _check_gguf_file(out):
    """The .gguf written beside the safetensors holds the same packed bytes as GGUF-typed
    tensors (read back with llama.cpp's gguf-py reader, dequantized by its NumPy code)."""
    import gguf
    from gguf import quants as gq
    from safetensors.numpy import load_file

    from hierarchos_jax import quant

    reader = gguf.GGUFReader(str(out / GGUF_FILE))
    field = reader.fields["hierarchos.quantization"]
    manifest = json.loads(bytes(field.parts[field.data[0]]).decode())
    assert manifest == json.loads((out / MANIFEST).read_text())
    stored = load_file(str(out / WEIGHTS))
    read = {t.name: t for t in reader.tensors}
    assert set(read) == set(stored)
    for name, info in manifest["tensors"].items():
        t = read[name]
        assert t.tensor_type.name == info["qtype"] == "Q8_0"
        assert t.data.tobytes() == stored[name].tobytes()
        np.testing.assert_array_equal(gq.dequantize(stored[name], t.tensor_type),
                                      quant.dequantize(stored[name], "Q8_0", info["padded_k"]))
    floats = [n for n in stored if n not in manifest["tensors"]]
    assert floats
    for name in floats:
        assert read[name].tensor_type.name == "F32"
        np.testing.assert_array_equal(np.asarray(read[name].data).reshape(-1), stored[name].reshape(-1))


def test_cli_quantize_then_generate(tiny_dir, tmp_path, capsys):
    out = tmp_path / "tiny-q8"
    assert cli_main.main(["quantize", "--model_path", str(tiny_dir), "--qtype", "q8_0", "--out-dir", str(out),
                          "--gguf"]) == 0
    assert "Q8_0" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {MANIFEST, WEIGHTS, GGUF_FILE, "hierarchos_config.json",
                                               "tokenizer.json"}
    _check_gguf_file(out)
    assert cli_main.main(["quantize", "--model-path", str(tiny_dir), "--qtype", "INT4", "--gguf",
                          "--out-dir", str(tmp_path / "int4")]) == 1
    assert "INT4 has no GGUF equivalent" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written left
    rc = cli_main.main(["generate", "--model-path", str(out), "--prompt", "Hello", "--max-new-tokens", "5",
                        "--temperature", "0", "--json"])
    got = capsys.readouterr()
    assert rc == 0, got.err
    data = json.loads(got.out)
    assert len(data["ids"]) == 5 and data["stop_reason"] == "max_new_tokens"
    # bad input: one clear line
    assert cli_main.main(["quantize", "--model-path", str(tmp_path / "missing"), "--out-dir", str(out)]) == 1
    assert "no such file" in capsys.readouterr().err
    # version 1 (reference layouts under the GGUF names, never shipped) is refused in one line
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(ModelDirError, match="manifest version 1 is not supported .*quantize the float model again"):
        load_model_dir(out)
    (out / MANIFEST).write_text("{}")
    with pytest.raises(ModelDirError, match="not a hierarchos-jax-quantized manifest"):
        load_model_dir(out)
