"""Tests for hierarchos_jax.config (spec model.md §1, §2.5)."""

from __future__ import annotations

import json
import math
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from hierarchos_jax.config import (
    MODEL_KEYS,
    REFERENCE_EXTRA_KEYS,
    ConfigError,
    ConfigWarning,
    FrozenDict,
    HierarchosConfig,
    backfill_reference_dict,
    choose_head_size,
    list_presets,
    lora_rank,
)

FIXTURE_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference" / "tiny"
FIXTURE_CONFIG = FIXTURE_DIR / "model" / "hierarchos_config.json"

TINY_ARCH = dict(
    vocab_size=512, context_dim=32, h_hidden=32, l_hidden=32, persistent_dim=8, ltm_slots=16,
    ltm_key_dim=16, ltm_val_dim=16, ltm_topk=2, max_h_steps=3, max_l_steps=3, h_stride=2,
    rwkv_head_size=16,
)


def _tiny(**kw) -> HierarchosConfig:
    return HierarchosConfig(**{**TINY_ARCH, **kw})


def _fixture_dict() -> dict:
    if not FIXTURE_CONFIG.is_file():
        pytest.skip(f"reference fixture missing: {FIXTURE_CONFIG}")
    with FIXTURE_CONFIG.open() as f:
        return json.load(f)


# ------------------------------------------------------------------ derived rules


@pytest.mark.parametrize(
    "width,size", [(448, 64), (96, 48), (100, 50), (16, 16), (8, 8), (450, 75), (64, 64),
                   (32, 32), (128, 64), (200, 50), (7, 7), (1, 1)]
)
def test_head_size_rule(width, size):
    assert choose_head_size(width) == size
    assert choose_head_size(width, None) == size
    assert choose_head_size(width, 0) == size
    assert HierarchosConfig(context_dim=width, rwkv_head_size=None,
                            ltm_topk=4).h_head_size == size


def test_head_size_rule_requested_and_per_cell():
    assert choose_head_size(448, 32) == 32
    assert choose_head_size(448, 48) == 64  # not a divisor -> automatic rule
    c = HierarchosConfig(context_dim=448, l_hidden=96)
    assert (c.h_head_size, c.l_head_size) == (64, 48)
    assert (c.h_n_head, c.l_n_head) == (7, 2)
    assert (c.h_state_slots, c.l_state_slots) == (67, 51)
    with pytest.raises(ConfigError, match="h_state_slots"):
        c.state_slots
    assert HierarchosConfig().state_slots == 67
    assert _tiny().state_slots == 19


@pytest.mark.parametrize(
    "width,rw,rg,rv",
    [(64, 8, 8, 8), (256, 32, 64, 32), (448, 64, 96, 32), (512, 64, 128, 32),
     (768, 64, 128, 32), (1024, 64, 160, 64)],
)
def test_lora_rank_table(width, rw, rg, rv):
    assert HierarchosConfig.lora_ranks(width) == (rw, rw, rg)
    assert lora_rank(width, 1.7) == rv
    assert choose_head_size(width) == 64


def test_other_derived_values():
    c = HierarchosConfig()
    assert c.in_dim == 1088
    assert c.halt_bias_init == pytest.approx(-math.log(4))
    assert HierarchosConfig(max_h_steps=1).halt_bias_init == 0.0
    assert c.effective_reference_chunk_len == 256
    assert c.replace(reference_chunk_len=64).effective_reference_chunk_len == 64
    assert c.replace(training_chunk_size=512).effective_reference_chunk_len == 512
    assert c.h_lora_ranks == c.l_lora_ranks == (64, 64, 96)


def test_time_freqs():
    c = HierarchosConfig()
    f = c.time_freqs()
    assert f.dtype == np.float32 and f.shape == (64,)
    assert f[0] == 1.0
    assert f[-1] == pytest.approx(1e-4, rel=1e-6)
    j = np.arange(64, dtype=np.float64)
    # the exponent is formed in float32 (as the reference does): ~1e-6 relative error
    np.testing.assert_allclose(f, np.exp(-j * math.log(10000) / 63), rtol=2e-6)
    # exact float32 values of the reference fixture's stored buffer (ltm_val_dim 16)
    expected = np.array([1.0, 2.6826960e-01, 7.1968570e-02, 1.9306982e-02, 5.1794755e-03,
                         1.3894956e-03, 3.7275953e-04, 9.9999990e-05], np.float32)
    np.testing.assert_array_equal(_tiny().time_freqs(), expected)
    assert _tiny(ltm_val_dim=1).time_freqs().shape == (0,)
    np.testing.assert_array_equal(_tiny(ltm_val_dim=2).time_freqs(), np.ones(1, np.float32))
    np.testing.assert_array_equal(_tiny(ltm_val_dim=3).time_freqs(), np.ones(1, np.float32))


def test_time_freqs_close_to_torch():
    torch = pytest.importorskip("torch")
    for d in (4, 16, 64, 128, 200, 257):
        h = d // 2
        scale = math.log(10000) / (h - 1)
        ref = torch.exp(torch.arange(h, dtype=torch.float32) * -scale).numpy()
        ours = _tiny(ltm_val_dim=d).time_freqs()
        ulp = np.abs(ours.view(np.int32) - ref.view(np.int32)).max()
        assert ulp <= 1, (d, ulp)


# ------------------------------------------------------------------ parameter counts


def test_param_count_232m():
    c = HierarchosConfig()
    assert c.param_count() == 232_516_229
    b = c.param_count_breakdown()
    assert b["h_deepemb + l_deepemb"] == 180_121_088
    assert b["h_rnn"] == b["l_rnn"] == 2_617_216
    assert b["rosa_emb"] == 22_515_584
    assert HierarchosConfig.from_preset("hierarchos-232m").param_count() == 232_516_229


@pytest.mark.parametrize(
    "overrides,count",
    [  # verified against the PyTorch reference (sum of unique parameters)
        ({}, 203_469),
        ({"use_rosa": False}, 187_019),
        ({"use_deepembed": False}, 72_397),
        ({"memory_token_routers": False}, 203_403),
        ({"use_rosa": False, "use_deepembed": False, "memory_token_routers": False}, 55_914),
        ({"l_hidden": 48, "rwkv_head_size": None}, 255_229),
    ],
)
def test_param_count_flags(overrides, count):
    assert _tiny(**overrides).param_count() == count


def test_param_count_wide_worker():
    c = HierarchosConfig(vocab_size=512, context_dim=256, l_hidden=200, persistent_dim=8,
                         ltm_slots=16, ltm_key_dim=16, ltm_val_dim=7, ltm_topk=2,
                         max_h_steps=3, max_l_steps=3, h_stride=2)
    assert (c.h_head_size, c.l_head_size) == (64, 50)
    assert c.param_count() == 2_992_981


def test_param_count_fixture():
    c = HierarchosConfig.from_reference_dict(_fixture_dict())
    assert c.param_count() == 203_469
    assert (c.h_head_size, c.h_n_head, c.lora_ranks(c.h_hidden)) == (16, 2, (8, 8, 8))


# ------------------------------------------------------------------ presets


def test_presets():
    assert {"tiny", "small", "hierarchos-232m"} <= set(list_presets())
    tiny = HierarchosConfig.from_preset("tiny")
    assert tiny == _tiny()
    assert tiny.param_count() == 203_469
    assert tiny.l_conv_atol == 1e-4 and tiny.memory_gate_warmup_steps == 2000
    small = HierarchosConfig.from_preset("small")
    assert (small.context_dim, small.h_hidden, small.l_hidden, small.vocab_size) == (128, 128, 128, 2048)
    assert (small.ltm_slots, small.ltm_topk, small.max_h_steps, small.max_l_steps) == (256, 4, 3, 3)
    assert small.param_count() == 3_397_509
    big = HierarchosConfig.from_preset("hierarchos-232m")
    assert big == HierarchosConfig()
    path = Path(__file__).resolve().parents[1] / "configs" / "tiny.json"
    assert HierarchosConfig.from_preset(path) == tiny
    assert HierarchosConfig.from_preset(str(path)) == tiny
    with pytest.raises(ConfigError, match="unknown preset"):
        HierarchosConfig.from_preset("nope")


def test_presets_load_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("tiny", "small", "hierarchos-232m"):
            HierarchosConfig.from_preset(name)


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"vocab_size": 0}, "vocab_size"),
        ({"vocab_size": -3}, "vocab_size"),
        ({"vocab_size": 5.0}, "vocab_size"),
        ({"vocab_size": True}, "vocab_size"),
        ({"context_dim": 0}, "context_dim"),
        ({"context_dim": "32"}, "context_dim"),
        ({"h_hidden": 64}, "h_hidden"),
        ({"l_hidden": 0}, "l_hidden"),
        ({"l_hidden": 12.5}, "l_hidden"),
        ({"persistent_dim": -1}, "persistent_dim"),
        ({"ltm_slots": 0}, "ltm_slots"),
        ({"ltm_key_dim": 0}, "ltm_key_dim"),
        ({"ltm_val_dim": -1}, "ltm_val_dim"),
        ({"ltm_topk": 0}, "ltm_topk"),
        ({"ltm_topk": 17}, "ltm_topk"),
        ({"h_stride": 0}, "h_stride"),
        ({"max_h_steps": 0}, "max_h_steps"),
        ({"max_l_steps": -2}, "max_l_steps"),
        ({"training_chunk_size": 0}, "training_chunk_size"),
        ({"use_rosa": 1}, "use_rosa"),
        ({"use_deepembed": "yes"}, "use_deepembed"),
        ({"memory_token_routers": None}, "memory_token_routers"),
        ({"rwkv_head_size": 12}, "rwkv_head_size"),
        ({"rwkv_head_size": "auto"}, "rwkv_head_size"),
        ({"rwkv_head_size": "16"}, "rwkv_head_size"),
        ({"rwkv_head_size": -16}, "rwkv_head_size"),
        ({"rwkv_head_size": 16.0}, "rwkv_head_size"),
        ({"detach_every_n_steps": 3.5}, "detach_every_n_steps"),
        ({"detach_every_n_steps": "32"}, "detach_every_n_steps"),
        ({"reference_chunk_len": 0}, "reference_chunk_len"),
        ({"recurrent_state_clamp": 0.0}, "recurrent_state_clamp"),
        ({"context_state_clamp": -1.0}, "context_state_clamp"),
        ({"drift_state_clamp": float("inf")}, "drift_state_clamp"),
        ({"drift_delta_scale": float("nan")}, "drift_delta_scale"),
        ({"activation_clamp": "100"}, "activation_clamp"),
        ({"halt_logit_clamp": 0}, "halt_logit_clamp"),
        ({"drift_norm_clamp": -0.5}, "drift_norm_clamp"),
        ({"rwkv_channel_mix_key_clamp": -1}, "rwkv_channel_mix_key_clamp"),
        ({"rwkv_channel_mix_deepembed_clamp": None}, "rwkv_channel_mix_deepembed_clamp"),
        ({"l_conv_atol": -1e-4}, "l_conv_atol"),
        ({"l_conv_atol": None}, "l_conv_atol"),
        ({"commitment_threshold": float("nan")}, "commitment_threshold"),
        ({"h_halt_thresh": "0.9"}, "h_halt_thresh"),
        ({"memory_gate_warmup_steps": -1}, "memory_gate_warmup_steps"),
        ({"memory_gate_warmup_steps": 2.5}, "memory_gate_warmup_steps"),
        ({"memory_gate_warmup_floor": -0.1}, "memory_gate_warmup_floor"),
        ({"ltm_lr": -1e-3}, "ltm_lr"),
        ({"ltm_weight_decay": -1.0}, "ltm_weight_decay"),
        ({"ltm_forget_rate": 1.5}, "ltm_forget_rate"),
        ({"ltm_score_grad_scale": -1.0}, "ltm_score_grad_scale"),
        ({"z_loss_weight": -1.0}, "z_loss_weight"),
        ({"isolate_batch_ltm": 0}, "isolate_batch_ltm"),
        ({"compile_static_worker_loop": "no"}, "compile_static_worker_loop"),
        ({"extra": {"context_dim": 3}}, "context_dim"),
    ],
)
def test_validation_errors_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        _tiny(**kw)


def test_validation_messages():
    with pytest.raises(ConfigError, match=r"h_hidden \(64\) must equal context_dim \(32\)"):
        _tiny(h_hidden=64)
    with pytest.raises(ConfigError, match="rwkv_head_size 12 does not divide h_hidden 32"):
        _tiny(rwkv_head_size=12)
    with pytest.raises(ConfigError, match="rwkv_head_size 16 does not divide l_hidden 40"):
        _tiny(l_hidden=40)
    assert issubclass(ConfigError, ValueError)


def test_python_normalisation():
    c = _tiny(h_hidden=None, l_hidden=None, rwkv_head_size=0, detach_every_n_steps=0,
              ltm_lr=1, memory_gate_warmup_steps=100.0)
    assert (c.h_hidden, c.l_hidden) == (32, 32)
    assert c.rwkv_head_size is None and c.h_head_size == 32
    assert c.detach_every_n_steps is None
    assert _tiny(detach_every_n_steps=-4).detach_every_n_steps is None
    assert isinstance(c.ltm_lr, float) and c.ltm_lr == 1.0
    assert c.memory_gate_warmup_steps == 100 and isinstance(c.memory_gate_warmup_steps, int)
    assert _tiny(persistent_dim=0).in_dim == 32 + 2 * 16
    assert HierarchosConfig(context_dim=64).h_hidden == 64
    assert HierarchosConfig(context_dim=64).l_hidden == 64


def test_cli_defaults():
    c = HierarchosConfig()
    assert (c.vocab_size, c.context_dim, c.h_hidden, c.l_hidden) == (50257, 448, 448, 448)
    assert (c.persistent_dim, c.ltm_slots, c.ltm_key_dim, c.ltm_val_dim, c.ltm_topk) == (128, 1024, 128, 128, 4)
    assert (c.h_stride, c.max_h_steps, c.max_l_steps) == (4, 5, 5)
    assert c.use_deepembed and c.use_rosa and c.memory_token_routers
    assert c.rwkv_head_size is None and c.h_head_size == 64
    assert (c.l_conv_atol, c.commitment_threshold, c.h_halt_thresh) == (1e-4, 0.05, 0.9)
    assert (c.memory_gate_warmup_steps, c.memory_gate_warmup_floor) == (2000, 0.1)
    assert (c.ltm_lr, c.ltm_momentum, c.ltm_weight_decay, c.ltm_forget_rate) == (1e-3, 0.9, 1e-4, 0.01)
    assert c.reference_chunk_len is None and c.training_chunk_size == 256
    assert (c.z_loss_weight, c.isolate_batch_ltm, c.detach_every_n_steps) == (1e-4, True, 32)
    assert (c.recurrent_state_clamp, c.context_state_clamp, c.drift_state_clamp) == (50.0, 50.0, 5.0)
    assert (c.drift_norm_clamp, c.drift_delta_scale, c.activation_clamp, c.halt_logit_clamp) == (0.0, 1.0, 100.0, 30.0)
    assert (c.rwkv_channel_mix_key_clamp, c.rwkv_channel_mix_deepembed_clamp) == (12.0, 4.0)
    assert not c.inference_logit_parity and c.compile_static_worker_loop is None
    assert c.rosa_max_context == 512 and c.ltm_score_grad_scale == 1.0


# ------------------------------------------------------------------ replace / extra


def test_replace():
    c = _tiny()
    d = c.replace(max_l_steps=7)
    assert d.max_l_steps == 7 and c.max_l_steps == 3
    e = c.replace(context_dim=64)
    assert (e.context_dim, e.h_hidden, e.l_hidden) == (64, 64, 32)
    with pytest.raises(ConfigError, match="h_hidden"):
        c.replace(context_dim=64, h_hidden=32)
    with pytest.raises(ConfigError, match="recurrent_state_clamp"):
        c.replace(recurrent_state_clamp=-1.0)
    with pytest.raises(ConfigError, match="unknown config field"):
        c.replace(epochs=3)


def test_replace_on_reference_config_is_strict():
    c = HierarchosConfig.from_reference_dict(_fixture_dict())
    with pytest.raises(ConfigError, match="ltm_lr"):
        c.replace(ltm_lr=-1.0)
    with pytest.raises(ConfigError, match="rwkv_head_size"):
        c.replace(rwkv_head_size=5)


def test_extra_and_hash_and_pickle():
    c = _tiny().with_extra(epochs=3, eval_tasks=["a", "b"])
    assert c.extra["epochs"] == 3 and c.extra["eval_tasks"] == ["a", "b"]
    assert isinstance(c.extra, FrozenDict)
    with pytest.raises(TypeError):
        c.extra["epochs"] = 4  # type: ignore[index]
    assert c == _tiny() and hash(c) == hash(_tiny())  # extra is not part of eq/hash
    assert c != _tiny(max_h_steps=4)
    assert "epochs" not in c.without_extra("epochs").extra
    with pytest.raises(ConfigError, match="context_dim"):
        c.with_extra(context_dim=3)
    with pytest.raises(dataclasses_frozen_error()):
        c.vocab_size = 3  # type: ignore[misc]
    r = pickle.loads(pickle.dumps(c))
    assert r == c and r.extra == c.extra
    f = HierarchosConfig.from_reference_dict(_fixture_dict())
    r = pickle.loads(pickle.dumps(f))
    assert r == f and r.to_reference_dict() == f.to_reference_dict()
    assert len({c, _tiny(), f, HierarchosConfig()}) == 3


def dataclasses_frozen_error():
    import dataclasses
    return dataclasses.FrozenInstanceError


def test_jit_static_arg():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    traces = []

    def f(cfg, x):
        traces.append(cfg)
        return x * cfg.halt_bias_init + cfg.h_head_size + cfg.time_freqs().sum()

    jf = jax.jit(f, static_argnums=0)
    x = jnp.ones(3)
    a = jf(_tiny(), x)
    jf(_tiny().with_extra(completed_epoch=5), x)  # same model -> cache hit
    assert len(traces) == 1
    jf(_tiny(max_h_steps=5), x)
    assert len(traces) == 2
    np.testing.assert_allclose(np.asarray(a), -math.log(2) + 16 + _tiny().time_freqs().sum(), rtol=1e-6)


# ------------------------------------------------------------------ reference dicts


def test_fixture_round_trip_and_values():
    d = _fixture_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known keys only: no warning
        c = HierarchosConfig.from_reference_dict(d)
    assert c.to_reference_dict() == d
    assert list(c.to_reference_dict()) == list(d)
    assert c.l_conv_atol == 0.0316501 and c.h_halt_thresh == 0.350573
    assert c.memory_gate_warmup_steps == 0 and c.inference_logit_parity is True
    assert c.rwkv_head_size == 16 and c.training_chunk_size == 256
    assert c.reference_chunk_len is None and c.effective_reference_chunk_len == 256
    assert c.extra["tokenizer_name"] == "refkit_bpe512"
    assert c.extra["completed_epoch"] == 0 and c.extra["model_type"] == "hierarchos"
    assert "ltm_cpu_gather_retrieval" in c.extra
    # a changed field is written with its new value, the rest stays original
    e = c.replace(max_l_steps=4).with_extra(completed_epoch=1)
    out = e.to_reference_dict()
    assert out["max_l_steps"] == 4 and out["completed_epoch"] == 1
    assert list(out) == list(d)
    assert {k: v for k, v in out.items() if k not in ("max_l_steps", "completed_epoch")} == \
        {k: v for k, v in d.items() if k not in ("max_l_steps", "completed_epoch")}


def test_json_file_round_trip_is_byte_identical(tmp_path):
    if not FIXTURE_CONFIG.is_file():
        pytest.skip("reference fixture missing")
    c = HierarchosConfig.from_json_file(FIXTURE_CONFIG)
    out = c.to_json_file(tmp_path / "sub" / "hierarchos_config.json")
    assert out.read_bytes() == FIXTURE_CONFIG.read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["hierarchos_config.json"]  # no temp left


def test_python_config_reference_round_trip(tmp_path):
    c = _tiny(detach_every_n_steps=0, l_conv_atol=0.02).with_extra(epochs=2)
    d = c.to_reference_dict()
    assert d["model_type"] == "hierarchos" and d["epochs"] == 2
    assert set(MODEL_KEYS) - set(d) == {"reference_chunk_len"}
    assert d["detach_every_n_steps"] is None
    back = HierarchosConfig.from_reference_dict(d)
    assert back == c and back.extra["epochs"] == 2
    path = c.to_json_file(tmp_path / "c.json")
    assert HierarchosConfig.from_json_file(path) == c
    assert HierarchosConfig.from_dict(d) == c


def test_missing_key_fallbacks_are_the_model_ones():
    d = {"vocab_size": 512, "context_dim": 32, "ltm_slots": 16, "ltm_topk": 2}
    c = HierarchosConfig.from_reference_dict(d)
    assert c.l_conv_atol == 0.01            # model fallback, CLI default is 1e-4
    assert c.commitment_threshold == 0.1    # model fallback, CLI default is 0.05
    assert c.memory_gate_warmup_steps == 0  # off; CLI default 2000
    assert c.memory_gate_warmup_floor == 0.0
    assert c.effective_reference_chunk_len == 128  # no training_chunk_size either
    assert (c.h_hidden, c.l_hidden) == (32, 32)
    assert c.persistent_dim == 128 and c.ltm_key_dim == 128 and c.h_stride == 4
    assert c.use_rosa and c.use_deepembed and c.memory_token_routers
    assert c.detach_every_n_steps == 32 and c.rwkv_head_size is None
    assert c.h_halt_thresh == 0.9 and c.z_loss_weight == 1e-4 and c.isolate_batch_ltm
    assert c.to_reference_dict() == d  # nothing added on re-export
    # replacing a fallback value makes it explicit on export
    out = c.replace(l_conv_atol=1e-4).to_reference_dict()
    assert out["l_conv_atol"] == 1e-4
    assert HierarchosConfig.from_reference_dict(out).l_conv_atol == 1e-4
    # training_chunk_size present -> L_ref follows it
    c2 = HierarchosConfig.from_reference_dict({**d, "training_chunk_size": 64})
    assert c2.reference_chunk_len is None and c2.effective_reference_chunk_len == 64
    c3 = HierarchosConfig.from_reference_dict({**d, "reference_chunk_len": 32, "training_chunk_size": 64})
    assert c3.effective_reference_chunk_len == 32
    # switching L_ref back to "follow training_chunk_size" stays explicit and correct
    out = c.replace(reference_chunk_len=None).to_reference_dict()
    assert HierarchosConfig.from_reference_dict(out).effective_reference_chunk_len == 256


def test_reference_none_and_sentinels():
    d = {"vocab_size": 512, "context_dim": 32, "h_hidden": None, "l_hidden": None,
         "h_stride": None, "ltm_slots": 16, "ltm_topk": 2, "rwkv_head_size": None,
         "detach_every_n_steps": 0}
    c = HierarchosConfig.from_reference_dict(d)
    assert (c.h_hidden, c.l_hidden, c.h_stride) == (32, 32, 4)
    assert c.rwkv_head_size is None and c.h_head_size == 32
    assert c.detach_every_n_steps is None
    assert c.to_reference_dict() == d
    for empty in ("", 0, False):
        assert HierarchosConfig.from_reference_dict({**d, "rwkv_head_size": empty}).rwkv_head_size is None
    e = HierarchosConfig.from_reference_dict({**d, "rwkv_head_size": "16", "detach_every_n_steps": -5})
    assert e.rwkv_head_size == 16 and e.detach_every_n_steps is None
    assert e.to_reference_dict()["rwkv_head_size"] == "16"


def test_reference_clamp_fallbacks_warn():
    d = {"vocab_size": 512, "context_dim": 32, "ltm_slots": 16, "ltm_topk": 2,
         "recurrent_state_clamp": 0.0, "activation_clamp": "abc", "halt_logit_clamp": float("inf"),
         "drift_norm_clamp": -1.0, "rwkv_channel_mix_key_clamp": 0.0,
         "rwkv_channel_mix_deepembed_clamp": None, "drift_delta_scale": "2.5"}
    with pytest.warns(ConfigWarning, match="recurrent_state_clamp") as rec:
        c = HierarchosConfig.from_reference_dict(d)
    assert len(rec) == 1
    msg = str(rec[0].message)
    for key in ("activation_clamp", "halt_logit_clamp", "drift_norm_clamp",
                "rwkv_channel_mix_deepembed_clamp"):
        assert key in msg
    assert c.recurrent_state_clamp == 50.0 and c.activation_clamp == 100.0
    assert c.halt_logit_clamp == 30.0 and c.drift_norm_clamp == 0.0
    assert c.rwkv_channel_mix_key_clamp == 0.0  # nonneg: 0 allowed (disables)
    assert c.rwkv_channel_mix_deepembed_clamp == 4.0
    assert c.drift_delta_scale == 2.5
    assert c.to_reference_dict() == d  # raw values survive
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HierarchosConfig.from_reference_dict(d, warn=False)


def test_reference_errors():
    base = {"vocab_size": 512, "context_dim": 32, "ltm_slots": 16, "ltm_topk": 2}
    cases = [
        ({"vocab_size": None}, "vocab_size"),
        ({"context_dim": None}, "context_dim"),
        ({"context_dim": 0}, "context_dim"),
        ({"l_hidden": 12.5}, "l_hidden"),
        ({"h_hidden": 64}, "h_hidden"),
        ({"rwkv_head_size": "auto"}, "rwkv_head_size"),
        ({"rwkv_head_size": 12}, "rwkv_head_size"),
        ({"rwkv_head_size": -2}, "rwkv_head_size"),
        ({"detach_every_n_steps": "x"}, "detach_every_n_steps"),
        ({"ltm_topk": 0}, "ltm_topk"),
        ({"l_conv_atol": "tight"}, "l_conv_atol"),
        ({"ltm_lr": float("nan")}, "ltm_lr"),
    ]
    for kw, key in cases:
        d = {**base, **kw}
        if kw.get(key, 1) is None and key in ("vocab_size", "context_dim"):
            d.pop(key)
        with pytest.raises(ConfigError, match=key):
            HierarchosConfig.from_reference_dict(d, warn=False)
    with pytest.raises(ConfigError, match="vocab_size"):
        HierarchosConfig.from_reference_dict({"context_dim": 32})
    with pytest.raises(ConfigError):
        HierarchosConfig.from_reference_dict([("vocab_size", 3)])  # type: ignore[arg-type]


def test_reference_keeps_reference_accepted_values():
    # values the reference accepts but a Python-built config refuses
    d = {"vocab_size": 512, "context_dim": 32, "ltm_slots": 16, "ltm_topk": 2,
         "ltm_lr": -1.0, "l_conv_atol": -1.0, "memory_gate_warmup_steps": -5,
         "z_loss_weight": -1.0, "isolate_batch_ltm": None, "use_rosa": 0}
    with pytest.warns(ConfigWarning):
        c = HierarchosConfig.from_reference_dict(d)
    assert c.ltm_lr == -1.0 and c.l_conv_atol == -1.0
    assert c.memory_gate_warmup_steps == 0 and c.z_loss_weight == 0.0  # "off" either way
    assert c.isolate_batch_ltm is False and c.use_rosa is False
    assert c.to_reference_dict() == d


def test_unknown_keys_warn_once():
    d = {"vocab_size": 512, "context_dim": 32, "ltm_slots": 16, "ltm_topk": 2,
         "epochs": 3, "tokenizer_name": "gpt2", "bogus_a": 1, "bogus_b": [1]}
    with pytest.warns(ConfigWarning) as rec:
        c = HierarchosConfig.from_reference_dict(d)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "bogus_a" in msg and "bogus_b" in msg and "epochs" not in msg
    assert c.extra["bogus_b"] == [1] and c.extra["epochs"] == 3
    assert c.to_reference_dict() == d
    with pytest.warns(ConfigWarning, match="bogus_a"):
        HierarchosConfig.from_dict({"bogus_a": 1})


def test_known_extra_keys():
    for k in ("epochs", "batch_size", "starting_lr", "amp", "compile", "tokenizer_name",
              "completed_epoch", "converted_from", "model_type", "max_length",
              "ltm_cpu_gather_retrieval", "cpu_loss_chunk_rows", "val_proj_alignment_updates"):
        assert k in REFERENCE_EXTRA_KEYS
    assert not set(MODEL_KEYS) & REFERENCE_EXTRA_KEYS


def test_from_dict_cli_like():
    args = {"context_dim": 64, "h_hidden": None, "l_hidden": None, "vocab_size": 1000,
            "detach_every_n_steps": 0, "epochs": 3, "mode": "train"}
    c = HierarchosConfig.from_dict(args)
    assert (c.h_hidden, c.l_hidden, c.detach_every_n_steps) == (64, 64, None)
    assert c.l_conv_atol == 1e-4  # CLI default, not the model fallback
    assert dict(c.extra) == {"epochs": 3, "mode": "train"}
    with pytest.raises(ConfigError, match="recurrent_state_clamp"):
        HierarchosConfig.from_dict({"recurrent_state_clamp": 0})


def test_backfill_reference_dict():
    keys = ["_orig_mod.h_deepemb.weight", "rosa_gate_logit", "ltm_router.weight", "h_rnn.r_k"]
    d = backfill_reference_dict({"vocab_size": 8, "rwkv_head_size": None}, keys, h_r_k_shape=(2, 16))
    assert d["use_deepembed"] and d["use_rosa"] and d["memory_token_routers"]
    assert d["rwkv_head_size"] is None  # explicit null stays
    assert d["rosa_max_context"] == 512 and d["rwkv_channel_mix_key_clamp"] == 12.0
    d = backfill_reference_dict({}, ["tok_emb.weight"], h_r_k_shape=(2, 16))
    assert not d["use_deepembed"] and not d["use_rosa"] and not d["memory_token_routers"]
    assert d["rwkv_head_size"] == 16
