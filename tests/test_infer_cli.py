"""``hierarchos generate`` on a copy of the reference tiny model directory."""

from __future__ import annotations

import json
import shutil

import pytest

import hierarchos_cli.main as cli_main


@pytest.fixture(scope="module")
def model_dir(reference_case_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "tiny"
    shutil.copytree(reference_case_dir / "model", out)
    for p in [out, *out.iterdir()]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return out


def run(capsys, *argv):
    rc = cli_main.main(["generate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_generate_json_is_one_valid_object(capsys, model_dir, reference_case_dir):
    case = json.loads((reference_case_dir / "case.json").read_text())["runs"]["gen"]
    rc, out, err = run(capsys, "--model-path", str(model_dir), "--prompt", case["prompt_text"],
                       "--max-new-tokens", "6", "--temperature", "0", "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert set(data) == {"prompt_ids", "ids", "text", "stop_reason", "ms_per_token", "prefill_ms"}
    assert data["prompt_ids"] == case["prompt_ids"]
    assert len(data["ids"]) == 6 and data["stop_reason"] == "max_new_tokens" and data["ms_per_token"] > 0
    # sampled, seeded: reproducible
    args = ["--model-path", str(model_dir), "--prompt", "Hello", "--max-new-tokens", "8", "--seed", "3", "--json"]
    first = json.loads(run(capsys, *args)[1])
    assert json.loads(run(capsys, *args)[1])["ids"] == first["ids"]


def test_generate_streams_text(capsys, model_dir):
    rc, out, err = run(capsys, "--model-path", str(model_dir), "--prompt", "Hello", "--max-new-tokens", "5",
                       "--temperature", "0")
    assert rc == 0 and out.endswith("\n") and "stop: max_new_tokens" in err


@pytest.mark.parametrize("argv, rc, match", [
    (["--top-p", "0"], 1, "--top-p must satisfy 0 < P <= 1"),
    (["--top-p", "1.5"], 1, "--top-p"),
    (["--repetition-penalty", "0"], 1, "--repetition-penalty"),
    (["--temperature", "nan"], 1, "--temperature"),
    (["--max-new-tokens", "-1"], 1, "--max-new-tokens"),
    (["--top-k", "abc"], 2, "invalid int value"),
    (["--stop", ""], 1, "--stop"),
])
def test_bad_values_are_one_line(capsys, model_dir, argv, rc, match):
    code, out, err = run(capsys, "--model-path", str(model_dir), "--prompt", "Hi", *argv)
    assert code == rc and out == ""
    assert len(err.strip().splitlines()) == 1 and match in err and "Traceback" not in err


def test_missing_model_and_vocab_mismatch_are_one_line(capsys, model_dir, tmp_path):
    code, _, err = run(capsys, "--model-path", str(tmp_path / "nope"), "--prompt", "Hi")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no such model directory" in err
    # a tokenizer with one token more than the model's vocabulary
    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    spec = json.loads((bad / "tokenizer.json").read_text())
    spec.setdefault("added_tokens", []).append({"id": 512, "content": "<|extra|>", "single_word": False,
                                                "lstrip": False, "rstrip": False, "normalized": False,
                                                "special": True})
    (bad / "tokenizer.json").write_text(json.dumps(spec))
    code, _, err = run(capsys, "--model-path", str(bad), "--prompt", "Hi")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "vocab_size is 512" in err


def test_our_model_dir_generates_the_same_tokens(capsys, model_dir, tmp_path):
    """A directory we write (model.safetensors + hierarchos.pt) generates what the
    reference directory generates."""
    from hierarchos_jax.io.model_dir import export_torch_dir

    ours = export_torch_dir(model_dir, tmp_path / "ours")
    args = ["--prompt", "Hello there", "--max-new-tokens", "6", "--temperature", "0", "--json"]
    rc_ref, out_ref, _ = run(capsys, "--model-path", str(model_dir), *args)
    rc_ours, out_ours, _ = run(capsys, "--model-path", str(ours), *args)
    assert rc_ref == rc_ours == 0 and (ours / "model.safetensors").is_file()
    assert json.loads(out_ours)["ids"] == json.loads(out_ref)["ids"]
