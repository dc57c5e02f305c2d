"""hierarchos expand: old weights placed block by block (explicit per-tensor oracle), the
expanded model reproduces the old one where the placement preserves the function, the
reference's positional copy on request, one-line errors for shrinking."""

from __future__ import annotations

import dataclasses

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
from hierarchos_jax.train import expand as E
from hierarchos_jax.train.optimizer import path_name

V0 = 13
GROW = dict(vocab_size=17, persistent_dim=12, ltm_topk=3, ltm_key_dim=20, ltm_val_dim=20)


def flat(model):
    _, p, _ = nnx.split(model, nnx.Param, ...)
    return {path_name(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(p)}


@pytest.fixture(scope="module")
def old():
    """A tiny model whose every parameter is perturbed (so zero-initialised tables such as
    rosa_emb and the routers carry information that must land in the right place)."""
    cfg = dataclasses.replace(HierarchosConfig.from_preset("tiny"), vocab_size=V0, inference_logit_parity=True)
    model = Hierarchos(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: x + rng.normal(0, 0.05, x.shape).astype(np.float32), params)
    return nnx.merge(graphdef, params, rest)


def _logits(model, ids):
    runner = Runner(model)
    with jax.default_matmul_precision("highest"):
        res, _ = runner(ids, runner.init_carry(ids.shape[0]), mode=RunMode.eval(logit_parity=True))
    return np.asarray(res.logits)


def test_blocks_are_placed_per_tensor(old):
    oc = old.config
    nc = E.expanded_config(oc, GROW)
    new, rep = E.expand_params(old, nc, seed=3)
    fresh = flat(Hierarchos(nc, rngs=nnx.Rngs(3)))
    o, n = flat(old), flat(new)
    assert not rep.initialised and set(rep.copied) | set(rep.placed) == set(n)
    C, P0, P1, k0, k1, D0, D1 = 32, 8, 12, 2, 3, 16, 20
    h0, h1 = D0 // 2, D1 // 2

    # in_proj [C + P + k·D, C]: token rows, persistent rows, k value blocks of [sin h | cos h].
    want = fresh["in_proj.kernel"].copy()
    want[:C] = o["in_proj.kernel"][:C]
    want[C:C + P0] = o["in_proj.kernel"][C:C + P0]
    want[C + P0:C + P1] = 0
    for j in range(k1):
        nb = C + P1 + j * D1
        want[nb:nb + D1] = 0
        if j < k0:
            ob = C + P0 + j * D0
            want[nb:nb + h0] = o["in_proj.kernel"][ob:ob + h0]
            want[nb + h1:nb + h1 + h0] = o["in_proj.kernel"][ob + h0:ob + D0]
    np.testing.assert_array_equal(n["in_proj.kernel"], want)
    # qproj [token C | context C, K]: both row blocks kept, new key columns zero.
    want = np.zeros_like(fresh["qproj.kernel"])
    want[:, :16] = o["qproj.kernel"]
    np.testing.assert_array_equal(n["qproj.kernel"], want)
    # rosa_emb [V + 1, C]: token rows, and the old "no hint" row V0 moves to row V1.
    want = fresh["rosa_emb.embedding"].copy()
    want[:V0] = o["rosa_emb.embedding"][:V0]
    want[17] = o["rosa_emb.embedding"][V0]
    np.testing.assert_array_equal(n["rosa_emb.embedding"], want)
    # LTM values and val_proj: the D axis is [sin half | cos half].
    for name in ("ltm.vals", "val_proj.kernel"):
        want = fresh[name].copy()
        want[:, :h0] = o[name][:, :h0]
        want[:, h1:h1 + h0] = o[name][:, h0:]
        np.testing.assert_array_equal(n[name], want, err_msg=name)
    # Plain axes: leading corner (new token rows, persistent entries, key columns keep the fresh init).
    for name in ("tok_emb.embedding", "h_deepemb.embedding", "l_deepemb.embedding", "persistent", "ltm.keys"):
        want = fresh[name].copy()
        want[tuple(slice(0, s) for s in o[name].shape)] = o[name]
        np.testing.assert_array_equal(n[name], want, err_msg=name)
    for name in rep.copied:
        np.testing.assert_array_equal(n[name], o[name], err_msg=name)
    assert float(new.time_freqs[...].shape[0]) == h1


def test_expanded_model_reproduces_the_old_outputs(old):
    new, _ = E.expand_params(old, E.expanded_config(old.config, GROW), seed=3)
    ids = np.array([[1, 5, 2, 11, 7, 3, 12, 0, 4, 9], [3, 3, 8, 1, 10, 2, 6, 5, 0, 11]], np.int32)
    lo, ln = _logits(old, ids), _logits(new, ids)
    assert ln.shape[-1] == 17
    np.testing.assert_allclose(ln[..., :V0], lo, rtol=0, atol=2e-5)


def test_reference_placement_and_width_growth(old):
    # The reference's rule: a positional leading-overlap copy, blocks not re-aligned.
    nc = E.expanded_config(old.config, dict(persistent_dim=12))
    ref, _ = E.expand_params(old, nc, seed=1, placement="reference")
    fresh = flat(Hierarchos(nc, rngs=nnx.Rngs(1)))
    o, r = flat(old), flat(ref)
    want = fresh["in_proj.kernel"].copy()
    want[:o["in_proj.kernel"].shape[0]] = o["in_proj.kernel"]
    np.testing.assert_array_equal(r["in_proj.kernel"], want)
    # Width: h_hidden (and l_hidden, equal before) follow context_dim; heads appended, head size kept.
    wc = E.expanded_config(old.config, dict(context_dim=48))
    assert (wc.h_hidden, wc.l_hidden, wc.h_head_size) == (48, 48, 16)
    wide, _ = E.expand_params(old, wc, seed=1)
    w = flat(wide)
    np.testing.assert_array_equal(w["h_rnn.r_k"][:2], o["h_rnn.r_k"])                 # per head [H, N]
    np.testing.assert_array_equal(w["l_input_proj.kernel"][48:80, :32], o["l_input_proj.kernel"][32:, :])
    np.testing.assert_array_equal(w["qproj.kernel"][48:80], o["qproj.kernel"][32:])    # context block
    with pytest.raises(E.ExpandError, match="head.size 16"):
        E.expanded_config(old.config, dict(context_dim=40))


def test_cli_expand_and_one_line_errors(old, tmp_path, capsys):
    save_model_dir(old, tmp_path / "old")
    rc = cli_main.main(["expand", "--old-model-path", str(tmp_path / "old"), "--output-dir", str(tmp_path / "new"),
                        "--ltm_topk", "3", "--vocab-size", "17", "--seed", "2"])
    assert rc == 0
    loaded = load_model_dir(tmp_path / "new")
    assert (loaded.config.ltm_topk, loaded.config.vocab_size, loaded.config.context_dim) == (3, 17, 32)
    capsys.readouterr()
    rc = cli_main.main(["expand", "--old-model-path", str(tmp_path / "old"), "--output-dir", str(tmp_path / "bad"),
                        "--context_dim", "16"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "smaller" in err and "only grows" in err
    assert not (tmp_path / "bad").exists()
    rc = cli_main.main(["expand", "--old-model-path", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1 and "nowhere" in err
