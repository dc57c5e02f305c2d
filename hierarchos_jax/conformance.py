"""Replay a reference golden case and compare (``python -m hierarchos_jax.conformance``).

A case directory holds ``model/`` (a reference model directory), ``case.json`` (the exact
runs) and ``golden.npz`` (inputs, and usually the reference outputs). This tool loads the
model through our importer, reproduces every run the case describes (eval, evalalt,
train, mc_eval, mc_train, gen), writes every non-input array named in
``case.json:golden_arrays`` to ``--out``, prints per array the largest absolute and
relative difference to the golden, and exits 1 when an array is outside the tolerances
of the fixture README (discrete decisions exact; logits/states atol 2e-4 + rtol 1e-4;
scalars atol 5e-5; gradients ``1e-3 * max|ref| + 1e-6``). A golden file that holds only
inputs is filled in, not compared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

INPUT_PREFIXES = ("in_", "gen_prompt_ids", "gen_in_ltm_")
EXACT_SUFFIXES = ("_topk_idx", "_rosa_ids", "_rosa_past_tokens", "_worker_steps", "_h_ponder_steps")
EXACT_NAMES = ("gen_generated_ids",)
ATOL, RTOL, SCALAR_ATOL, GPU_ATOL = 2e-4, 1e-4, 5e-5, 1e-3


# ---------------------------------------------------------------------------- runs

def _memory_from_inputs(g, prefix="in_ltm_"):
    """Working memory given by the case, or ``None`` (fresh memory) when it has none."""
    from hierarchos_jax.model.ltm import WorkingMemory

    if prefix + "fast_vals" not in g:
        return None
    fast = np.asarray(g[prefix + "fast_vals"], np.float32)
    mom = np.asarray(g[prefix + "mom_vals"], np.float32)
    ts = np.asarray(g[prefix + "timestamps"], np.float32)
    src_key = prefix + "sources"
    src = np.asarray(g[src_key], np.int32) if src_key in g else np.zeros(ts.shape, np.int32)
    if fast.ndim == 2:  # one shared memory (module buffers)
        fast, mom, ts, src = fast[None], mom[None], ts[None], src[None]
    return WorkingMemory(fast, mom, ts, src)


def _state_arrays(prefix, carry, out):
    st = carry.state
    out[prefix + "h_state"] = st.h_state
    out[prefix + "l_state"] = st.l_state
    out[prefix + "prev_context"] = st.prev_context
    out[prefix + "target_context"] = st.target_context
    out[prefix + "drift_state"] = st.drift
    if carry.rosa.past_tokens is not None:
        out[prefix + "rosa_past_tokens"] = carry.rosa.past_tokens
    mem = st.memory
    out[prefix + "ltm_fast_vals"] = mem.fast
    out[prefix + "ltm_mom_vals"] = mem.mom
    out[prefix + "ltm_timestamps"] = mem.timestamps
    out[prefix + "ltm_sources"] = mem.sources


def _step_arrays(prefix, outputs, rosa_ids, out):
    out[prefix + "worker_steps"] = outputs.worker_steps
    planned = np.asarray(outputs.planned)
    out[prefix + "h_ponder_steps"] = np.asarray(outputs.ponder_steps)[planned]
    out[prefix + "topk_idx"] = outputs.topk_idx
    out[prefix + "topk_vals"] = outputs.topk_vals
    if rosa_ids is not None:
        out[prefix + "rosa_ids"] = rosa_ids


def _concat_outputs(parts):
    from hierarchos_jax.model.hierarchos import Outputs

    cat = {}
    for name in Outputs._fields:
        arrays = [np.asarray(getattr(p, name)) for p in parts]
        axis = 0 if arrays[0].ndim == 1 else 1
        cat[name] = np.concatenate(arrays, axis=axis)
    return Outputs(**cat)


class Replayer:
    def __init__(self, case_dir: Path, golden):
        from hierarchos_jax.io.model_dir import load_model_dir
        from hierarchos_jax.model.run import Runner

        self.case_dir = case_dir
        self.case = json.loads((case_dir / "case.json").read_text())
        self.g = golden
        loaded = load_model_dir(case_dir / self.case.get("model_dir", "model"))
        self.model, self.config = loaded.model, loaded.config
        self.runner = Runner(self.model)
        self.parity = bool(self.config.inference_logit_parity or self.config.full_sample_bptt)
        self.eos_id = self._eos_id(case_dir / self.case.get("model_dir", "model"))

    @staticmethod
    def _eos_id(model_dir: Path) -> int:
        """The tokenizer's end-of-text id (the reference loop stops on it); 0 without a tokenizer."""
        from hierarchos_jax.io.tokenizer import Tokenizer, TokenizerError

        try:
            eos = Tokenizer(model_dir).eos_id
        except (TokenizerError, OSError):
            return 0
        return 0 if eos is None else int(eos)

    def init_carry(self, batch, memory, *, training):
        """The case's working memory, else the reference's fresh one: private rows in training
        or for B > 1 (when ``isolate_batch_ltm``), one shared memory otherwise."""
        if memory is not None:
            return self.runner.init_carry(batch, memory=memory)
        shared = not (self.config.isolate_batch_ltm and (training or batch > 1))
        return self.runner.init_carry(batch, shared_memory=shared)

    def inputs(self):
        g = self.g
        ids = np.asarray(g["in_input_ids"])
        mask = np.asarray(g["in_attention_mask"]) if "in_attention_mask" in g else np.ones_like(ids)
        labels = np.asarray(g["in_labels"]) if "in_labels" in g else ids
        return ids, mask, labels

    # -- eval / evalalt: one call, no labels
    def run_eval(self, prefix, parity, out):
        from hierarchos_jax.model.mode import RunMode

        ids, mask, _ = self.inputs()
        carry = self.init_carry(ids.shape[0], _memory_from_inputs(self.g), training=False)
        res, carry = self.runner(ids, carry, mode=RunMode.eval(logit_parity=parity), attention_mask=mask)
        out[prefix + "logits"] = res.logits
        _step_arrays(prefix, res.outputs, res.rosa_ids, out)
        _state_arrays(prefix, carry, out)

    # -- train: dense loss, chunked loss, gradients
    def run_train(self, prefix, out, want_grads):
        from flax import nnx

        from hierarchos_jax.io.reference_state import state_dict_layout, to_reference, variable_at
        from hierarchos_jax.model.hierarchos import forward
        from hierarchos_jax.model.losses import chunked_lm_loss, commitment_cost, lm_loss, ponder_cost
        from hierarchos_jax.model.mode import RunMode

        cfg = self.config
        ids, mask, labels = self.inputs()
        carry = self.init_carry(ids.shape[0], _memory_from_inputs(self.g), training=True)
        rosa_ids, history = self.runner.rosa_ids(ids, carry.rosa)
        graphdef, params = self.runner.graphdef, self.runner.params

        def objective(params, chunked):
            model = nnx.merge(graphdef, params)
            outputs, new_state = forward(model, jnp.asarray(ids), carry.state, mode=RunMode.train(),
                                         rosa_ids=None if rosa_ids is None else jnp.asarray(rosa_ids),
                                         attention_mask=jnp.asarray(mask))
            if chunked:
                lm = chunked_lm_loss(outputs.hidden, model.tok_emb.embedding[...], jnp.asarray(labels),
                                     z_loss_weight=cfg.z_loss_weight)
                logits = None
            else:
                logits = model.logits(outputs.hidden)
                lm = lm_loss(logits, jnp.asarray(labels), z_loss_weight=cfg.z_loss_weight)
            ponder, _ = ponder_cost(outputs, jnp.asarray(mask))
            commit = commitment_cost(outputs, jnp.asarray(mask))
            total = lm.loss + 0.01 * ponder + 0.5 * commit
            return total, (lm.loss, ponder, commit, logits, outputs, new_state)

        f = jax.jit(jax.value_and_grad(objective, has_aux=True), static_argnums=1)
        (_, (loss, ponder, commit, logits, outputs, new_state)), grads = f(params, False)
        out[prefix + "loss"] = loss
        out[prefix + "ponder_cost"] = ponder
        out[prefix + "commitment_cost"] = commit
        out[prefix + "logits"] = logits
        _step_arrays(prefix, outputs, rosa_ids, out)
        _state_arrays(prefix, type(carry)(new_state, history), out)
        out[prefix + "loss_chunked"] = jax.jit(objective, static_argnums=1)(params, True)[1][0]
        if want_grads:
            grad_model = nnx.merge(graphdef, grads)
            for e in state_dict_layout(cfg):
                if e.kind == "buffer" or e.name == "lm_head.weight":
                    continue
                out[f"{prefix}grad__{e.name}"] = to_reference(e.kind, np.asarray(variable_at(grad_model, e.path)[...]))

    # -- multi-chunk: the trainer's TBPTT carry (drift seeded at chunk starts)
    def run_chunks(self, prefix, run, training, out):
        from hierarchos_jax.model.losses import commitment_cost, lm_loss, ponder_cost
        from hierarchos_jax.model.mode import RunMode

        cfg = self.config
        ids, mask, labels = self.inputs()
        T = ids.shape[1]
        chunks = run.get("chunks") or [[0, T]]
        offsets = run.get("global_pos_offsets") or [s for s, _ in chunks]
        mode = RunMode.train() if training else RunMode.eval(logit_parity=self.parity)
        carry = self.init_carry(ids.shape[0], _memory_from_inputs(self.g), training=training)
        parts, logits, rosa, losses, ponders, commits = [], [], [], [], [], []
        seed = None
        for (s, e), off in zip(chunks, offsets):
            res, carry = self.runner(ids[:, s:e], carry, mode=mode, attention_mask=mask[:, s:e],
                                     drift_seed=seed, position=off)
            seed = carry.state.drift
            parts.append(res.outputs)
            logits.append(np.asarray(res.logits))
            if res.rosa_ids is not None:
                rosa.append(res.rosa_ids)
            if training:
                lm = lm_loss(res.logits, jnp.asarray(labels[:, s:min(e + 1, T)]), z_loss_weight=cfg.z_loss_weight)
                losses.append(lm.loss)
                ponders.append(ponder_cost(res.outputs, jnp.asarray(mask[:, s:e]))[0])
                commits.append(commitment_cost(res.outputs, jnp.asarray(mask[:, s:e])))
        outputs = _concat_outputs(parts)
        out[prefix + "logits"] = np.concatenate(logits, axis=1)
        _step_arrays(prefix, outputs, np.concatenate(rosa, axis=1) if rosa else None, out)
        _state_arrays(prefix, carry, out)
        if training:
            out[prefix + "loss"] = np.stack([np.asarray(x) for x in losses])
            out[prefix + "ponder_cost"] = np.stack([np.asarray(x) for x in ponders])
            out[prefix + "commitment_cost"] = np.stack([np.asarray(x) for x in commits])

    # -- gen: the reference's greedy loop (prefill, then one token per call)
    def run_gen(self, run, out):
        from hierarchos_jax.model.mode import RunMode

        cfg = self.config
        g = self.g
        prompt = np.asarray(g["gen_prompt_ids"]).reshape(1, -1)
        max_new = int(run.get("max_new_tokens", len(g["gen_generated_ids"]) if "gen_generated_ids" in g else 24))
        eos = run.get("eos_token_id", self.eos_id)
        mode = RunMode.eval(logit_parity=self.parity)
        carry = self.init_carry(1, _memory_from_inputs(g, "gen_in_ltm_"), training=False)
        chunk = 0 if self.parity else int(cfg.training_chunk_size or 0)
        P = prompt.shape[1]
        step = chunk if chunk > 0 else P

        def seed_at(position, carry):
            if not self.parity and chunk > 0 and position > 0 and position % chunk == 0:
                return carry.state.drift
            return None

        parts, rosa, step_logits, generated, gaps = [], [], [], [], []
        for s in range(0, P, step):
            e = min(s + step, P)
            res, carry = self.runner(prompt[:, s:e], carry, mode=mode, drift_seed=seed_at(s, carry), position=s)
            parts.append(res.outputs)
            if res.rosa_ids is not None:
                rosa.append(res.rosa_ids)
        last = np.asarray(res.logits)[:, -1]
        step_logits.append(last[0])
        position = P
        for _ in range(max_new):
            top2 = np.sort(last[0])[-2:]
            gaps.append(top2[1] - top2[0])
            token = int(np.argmax(last[0]))
            generated.append(token)
            if token == eos:
                break
            res, carry = self.runner(np.array([[token]]), carry, mode=mode, drift_seed=seed_at(position, carry),
                                     position=position)
            position += 1
            parts.append(res.outputs)
            if res.rosa_ids is not None:
                rosa.append(res.rosa_ids)
            last = np.asarray(res.logits)[:, -1]
            step_logits.append(last[0])
        outputs = _concat_outputs(parts)
        out["gen_generated_ids"] = np.asarray(generated, np.int64)
        out["gen_step_logits"] = np.stack(step_logits)
        out["gen_top2_gap"] = np.asarray(gaps, np.float32)
        out["gen_worker_steps"] = outputs.worker_steps
        out["gen_h_ponder_steps"] = np.asarray(outputs.ponder_steps)[np.asarray(outputs.planned)]
        if rosa:
            out["gen_rosa_ids"] = np.concatenate(rosa, axis=1)
        _state_arrays("gen_final_", carry, out)

    def run_all(self) -> dict:
        runs = self.case.get("runs", {})
        wanted = set(self.case.get("golden_arrays", {}))
        out: dict = {}
        with jax.default_matmul_precision("highest"):
            if "eval" in runs:
                self.run_eval("eval_", bool(runs["eval"].get("inference_logit_parity", self.parity)), out)
            if "evalalt" in runs:
                self.run_eval("evalalt_", bool(runs["evalalt"].get("inference_logit_parity", not self.parity)), out)
            if "train" in runs:
                self.run_train("train_", out, any(n.startswith("train_grad__") for n in wanted))
            if "mc_eval" in runs:
                self.run_chunks("mc_eval_", runs["mc_eval"], False, out)
            if "mc_train" in runs:
                self.run_chunks("mc_train_", runs["mc_train"], True, out)
            if "gen" in runs:
                self.run_gen(runs["gen"], out)
        return {k: np.asarray(v) for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------------- compare

def is_input(name: str) -> bool:
    return name.startswith(INPUT_PREFIXES)


def derive(name: str, produced: dict):
    """An array the golden stores in a reduced form (``*_last``, ``*_first``)."""
    if name in produced:
        return produced[name]
    if name.endswith("_last") and name[:-5] in produced:
        return produced[name[:-5]][:, -1]
    if name.endswith("_first") and name[:-6] in produced:
        return produced[name[:-6]][:1]
    return None


def tolerance_kind(name: str, ref: np.ndarray) -> str:
    if name in EXACT_NAMES or name.endswith(EXACT_SUFFIXES):
        return "exact"
    if "_grad__" in name:
        return "grad"
    if ref.ndim == 0 or name.startswith("mc_train_") and name.endswith(("_loss", "_cost")):
        return "scalar"
    return "array"


def compare(name: str, got: np.ndarray, ref: np.ndarray, atol: float) -> tuple[bool, float, float]:
    if got.shape != ref.shape:
        return False, float("inf"), float("inf")
    kind = tolerance_kind(name, ref)
    if kind == "exact":
        diff = np.abs(got.astype(np.int64) - ref.astype(np.int64)) if got.size else np.zeros(0)
        d = float(diff.max()) if diff.size else 0.0
        return d == 0, d, d
    got, ref = got.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(got - ref)
    dmax = float(diff.max()) if diff.size else 0.0
    rel = float((diff / np.maximum(np.abs(ref), 1e-12)).max()) if diff.size else 0.0
    if kind == "grad":
        bound = 1e-3 * (float(np.abs(ref).max()) if ref.size else 0.0) + 1e-6
        return dmax <= bound, dmax, rel
    if kind == "scalar":
        return dmax <= SCALAR_ATOL, dmax, rel
    return bool(np.all(diff <= atol + RTOL * np.abs(ref))), dmax, rel


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hierarchos_jax.conformance", description=__doc__.split("\n\n")[0])
    ap.add_argument("case_dir", type=Path, help="case directory (model/, case.json, golden.npz)")
    ap.add_argument("--out", type=Path, required=True, help="where to write the produced arrays (.npz)")
    ap.add_argument("--atol", type=float, default=None,
                    help=f"absolute tolerance for logits/states (default {ATOL}; {GPU_ATOL} is the GPU tier)")
    args = ap.parse_args(argv)
    case_dir = args.case_dir
    for need in ("case.json", "golden.npz"):
        if not (case_dir / need).exists():
            print(f"conformance: error: {case_dir / need} not found", file=sys.stderr)
            return 2
    atol = args.atol if args.atol is not None else (ATOL if jax.default_backend() == "cpu" else GPU_ATOL)
    golden = dict(np.load(case_dir / "golden.npz"))
    rep = Replayer(case_dir, golden)
    produced = rep.run_all()
    wanted = rep.case.get("golden_arrays", {})
    result, missing = {}, []
    for name, spec in wanted.items():
        if is_input(name):
            continue
        value = derive(name, produced)
        if value is None:
            if name.endswith(("_ltm_fast_vals", "_ltm_mom_vals", "_ltm_timestamps", "_ltm_sources")):
                continue
            missing.append(name)
            continue
        dtype = np.dtype(spec.get("dtype", value.dtype)) if isinstance(spec, dict) else value.dtype
        result[name] = np.asarray(value).astype(dtype)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez_compressed(tmp, **result)
    tmp.replace(args.out)
    print(f"wrote {len(result)} arrays to {args.out}")
    failures = list(missing)
    for name in missing:
        print(f"MISSING  {name}")
    have_golden = [n for n in result if n in golden]
    if not have_golden:
        print("golden file holds inputs only: outputs written, nothing compared")
        return 1 if missing else 0
    order = sorted(have_golden, key=lambda n: (tolerance_kind(n, golden[n]) != "exact", n))
    for name in order:
        ok, dabs, drel = compare(name, result[name], np.asarray(golden[name]), atol)
        if not ok:
            failures.append(name)
        print(f"{'ok  ' if ok else 'FAIL'}  {name:48s} max_abs={dabs:.3e} max_rel={drel:.3e}"
              f" [{tolerance_kind(name, golden[name])}]")
    print(f"conformance: {len(order) - len([f for f in failures if f in order])} arrays within tolerance, "
          f"{len(failures)} outside or missing")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
