"""hierarchos finetune / merge-lora on a tiny model: the loss falls, only the adapter
changes, the merge is exact and gives apply_lora's logits, bad inputs are one line."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import numpy as np
import pytest
from flax import nnx

from cli import main as cli_main
from hierarchos_jax.config import HierarchosConfig
from hierarchos_jax.io.model_dir import load_model_dir, save_model_dir
from hierarchos_jax.model.hierarchos import Hierarchos
from hierarchos_jax.model.mode import RunMode
from hierarchos_jax.model.run import Runner
from hierarchos_jax.train import lora as L
from hierarchos_jax.train import synthetic
from hierarchos_jax.train.optimizer import path_name

STEPS = 8


def _cfg(**kw):
    base = dataclasses.replace(HierarchosConfig.from_preset("tiny"), vocab_size=synthetic.CharCodec().vocab_size,
                               inference_logit_parity=True)
    return dataclasses.replace(base, **kw)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    tok = synthetic.save_tokenizer(root / "tok")
    save_model_dir(Hierarchos(_cfg(), rngs=nnx.Rngs(0)), root / "base", tokenizer_dir=tok)
    before = {p.name: _sha(p) for p in (root / "base").iterdir()}
    rc = cli_main.main(["finetune", "--model-path", str(root / "base"), "--out-dir", str(root / "ad"),
                        "--steps", str(STEPS), "--batch_size", "8", "--max_length", "24", "--starting-lr", "1e-2",
                        "--lora_r", "4", "--lora_alpha", "8", "--lora-dropout", "0", "--save-every", "4", "--h_stride", "3",
                        "--no-progress"])
    assert rc == 0
    return root, before


def _logits(model, ids):
    runner = Runner(model)
    with jax.default_matmul_precision("highest"):
        res, _ = runner(ids, runner.init_carry(ids.shape[0]), mode=RunMode.eval(logit_parity=True))
    return np.asarray(res.logits)


def _fixed_batch(n=6):
    codec, task = synthetic.CharCodec(), synthetic.AdditionTask()
    rows = [synthetic.encode_problem(codec, task, *task.sample(np.random.default_rng(100 + i))) for i in range(n)]
    T = max(len(r[0]) for r in rows)
    ids = np.full((n, T), codec.eos_id, np.int32)
    labels = np.full((n, T), -100, np.int32)
    for i, (x, y) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)] = x, y
    return ids, labels


def _ce(logits, ids, labels):
    lp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    tgt = labels[:, 1:]
    m = tgt != -100
    picked = np.take_along_axis(np.asarray(lp), np.where(m, tgt, 0)[..., None], axis=-1)[..., 0]
    return float(-(picked * m).sum() / m.sum())


def test_finetune_writes_adapter_and_changes_only_the_adapter(run):
    root, before = run
    ad = root / "ad"
    assert {p.name: _sha(p) for p in (root / "base").iterdir()} == before          # base untouched
    lines = [json.loads(x) for x in (ad / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1)) and all(r["applied"] for r in lines)
    assert {"loss", "ce", "ponder", "commitment", "lr", "grad_norm", "tokens_per_s"} <= set(lines[0])
    cfg = json.loads((ad / L.ADAPTER_CONFIG).read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 8 and cfg["hierarchos_jax"]["step"] == STEPS
    assert cfg["hierarchos_jax"]["training_mode"] == "train"
    assert (ad / "tokenizer.json").is_file()
    assert not [p for p in ad.iterdir() if p.name.startswith(".")]

    loaded = load_model_dir(root / "base")
    _, base, _ = nnx.split(loaded.model, nnx.Param, ...)
    lora, spec, _ = L.load_adapter(ad)
    assert len(lora["adapters"]) == 21 and sorted(lora["saved"]) == ["ltm.keys", "ltm.vals"]
    # Every adapter learned, except val_proj's: val_proj feeds only Hebbian writes and the value-alignment
    # auxiliary, neither of which is in this objective (read-only LTM, alignment weight 0).
    learned = sorted(n for n, ab in lora["adapters"].items() if np.abs(ab["B"]).max() > 0)
    assert learned == sorted(set(lora["adapters"]) - {"val_proj.kernel"})
    b = {path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(base)}
    adapted = {path_name(k): np.asarray(v)
               for k, v in jax.tree_util.tree_leaves_with_path(L.apply_lora(base, lora, spec))}
    changed = sorted(k for k in b if not np.array_equal(b[k], adapted[k]))
    assert changed == sorted([*learned, "ltm.keys", "ltm.vals"])


def test_finetune_lowers_the_loss_and_merge_is_exact(run, capsys):
    root, _ = run
    rc = cli_main.main(["merge-lora", "--model-path", str(root / "base"), "--lora-path", str(root / "ad"),
                        "--out-dir", str(root / "merged")])
    assert rc == 0
    from safetensors.numpy import load_file

    base_sd = load_file(str(root / "base" / "model.safetensors"))       # reference layout [out, in]
    merged_sd = load_file(str(root / "merged" / "model.safetensors"))
    ad = load_file(str(root / "ad" / L.ADAPTER_WEIGHTS))
    n = 0
    for key, w in base_sd.items():
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        a_key = f"base_model.model.{module}.lora_A.weight"
        if a_key in ad:
            want = (w.astype(np.float64) + 2.0 * (ad[a_key.replace("lora_A", "lora_B")].astype(np.float64)
                                                  @ ad[a_key].astype(np.float64))).astype(np.float32)
            np.testing.assert_array_equal(merged_sd[key], want, err_msg=key)
            n += 1
        elif key in ("ltm.keys", "ltm.vals"):
            np.testing.assert_array_equal(merged_sd[key], ad[f"base_model.model.{key}"])
        else:
            np.testing.assert_array_equal(merged_sd[key], w, err_msg=key)
    assert n == 21

    ids, labels = _fixed_batch()
    loaded = load_model_dir(root / "base")
    graphdef, base, rest = nnx.split(loaded.model, nnx.Param, ...)
    lora, spec, _ = L.load_adapter(root / "ad")
    applied = nnx.merge(graphdef, L.apply_lora(base, lora, spec), rest)
    applied.config = loaded.config.replace(h_stride=3)          # fine-tuned with --h_stride 3 (tiny: 2)
    merged = load_model_dir(root / "merged").model
    assert merged.config.h_stride == 3 and loaded.config.h_stride == 2
    lg_base, lg_applied, lg_merged = _logits(loaded.model, ids), _logits(applied, ids), _logits(merged, ids)
    np.testing.assert_allclose(lg_merged, lg_applied, rtol=0, atol=2e-5)
    ce0, ce1 = _ce(lg_base, ids, labels), _ce(lg_merged, ids, labels)
    print(f'held-out-style CE base {ce0:.3f} -> merged {ce1:.3f}')
    assert ce1 < ce0 - 0.1, (ce0, ce1)


def test_resume_from_a_checkpoint_reproduces_the_run(run, capsys):
    root, _ = run
    assert sorted(int(d.name) for d in (root / "ad" / "checkpoints").iterdir() if d.name.isdigit()) == [4, 8]
    rc = cli_main.main(["finetune", "--model-path", str(root / "base"), "--out-dir", str(root / "resumed"),
                        "--resume-from-ckpt", str(root / "ad" / "checkpoints" / "4"), "--steps", str(STEPS),
                        "--batch_size", "8", "--max_length", "24", "--starting-lr", "1e-2", "--lora_r", "4",
                        "--lora_alpha", "8", "--lora-dropout", "0", "--save-every", "4", "--h_stride", "3",
                        "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "resumed from" in capsys.readouterr().out
    from safetensors.numpy import load_file

    a = load_file(str(root / "ad" / L.ADAPTER_WEIGHTS))
    b = load_file(str(root / "resumed" / L.ADAPTER_WEIGHTS))
    assert a.keys() == b.keys()
    for k in a:                                   # the same four updates: bit-identical adapter
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    lines = [json.loads(x) for x in (root / "resumed" / "metrics.jsonl").read_text().splitlines()]
    first = [json.loads(x) for x in (root / "ad" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 6, 7, 8]
    assert [r["loss"] for r in lines] == [r["loss"] for r in first[4:]]


def test_mismatched_adapter_and_bad_options_are_one_line_errors(run, capsys, tmp_path):
    root, _ = run
    save_model_dir(Hierarchos(_cfg(ltm_topk=3), rngs=nnx.Rngs(0)), tmp_path / "other")
    rc = cli_main.main(["merge-lora", "--model-path", str(tmp_path / "other"), "--lora-path", str(root / "ad"),
                        "--out-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "in_proj" in err and "different base model" in err
    assert not (tmp_path / "m").exists()
    rc = cli_main.main(["merge-lora", "--model-path", str(root / "base"), "--lora-path", str(tmp_path),
                        "--out-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "adapter_config.json" in err
    save_model_dir(Hierarchos(dataclasses.replace(_cfg(), vocab_size=20), rngs=nnx.Rngs(0)), tmp_path / "v20")
    rc = cli_main.main(["finetune", "--model-path", str(tmp_path / "v20"), "--out-dir", str(tmp_path / "o"),
                        "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "vocab_size 13" in err, err
    rc = cli_main.main(["finetune", "--model-path", str(root / "base"), "--out-dir", str(tmp_path / "o2"),
                        "--resume-from-ckpt", str(tmp_path / "nope"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "nope" in err, err
    rc = cli_main.main(["finetune", "--model-path", str(root / "base"), "--out-dir", str(tmp_path / "o3"),
                        "--resume-from-ckpt", str(root / "ad"), "--lora_r", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "rank 4" in err, err
