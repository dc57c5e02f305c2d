"""Fixtures shared by the data-pipeline tests (imported by tests/test_data_*.py)."""

from __future__ import annotations

import argparse

import pytest

from hierarchos_jax.data import add_data_args
from hierarchos_jax.data.bpe import save_tokenizer_dir, train_bpe
from hierarchos_jax.io.tokenizer import Tokenizer


@pytest.fixture(autouse=True)
def _token_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Token caches of these tests go to their own temporary directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg_cache")))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """A byte-level BPE tokenizer directory (256 byte tokens + EOS)."""
    return save_tokenizer_dir(train_bpe(["abc"], vocab_size=257, show_progress=False),
                              tmp_path_factory.mktemp("tok") / "bytes")


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Tokenizer(tok_dir)


def parse(*argv):
    """The data options as ``hierarchos train`` parses them."""
    p = argparse.ArgumentParser()
    add_data_args(p)
    return p.parse_args(list(argv))
