"""Training data: sources -> formatted examples -> length-bucketed, padded batches (Grain).

Public API (used by ``hierarchos train``/``finetune``)::

    add_data_args(parser)          # --train, --hf-dataset, --pre-chunked-dataset, --kayla, ...
    has_data_args(args) -> bool
    data = build_train_data(args, tokenizer, vocab_size=V, batch_size=B, seq_len=M, chunk_size=L, seed=S)
    it = data.iterator()           # endless; it.get_state() / it.set_state(state) resume exactly
    batch = next(it)               # input_ids, labels, attention_mask, loss_weights, rosa_ids: [B, T]
    data.batches_per_epoch, data.stats, data.max_length

Modules: ``options`` (flags, formatter settings), ``readers`` (local files), ``hub`` (HF datasets),
``formatting`` (records -> tokens, labels, weights), ``pretokenized`` (rows with token ids),
``examples`` (the store), ``sources`` (which source, loading), ``bucketing`` (batch plan per epoch),
``collate`` (padding), ``rosa_map`` (ROSA ids), ``pipeline`` (Grain datasets, iterator state),
``token_cache`` (formatted examples saved once), ``tokenizer_source`` (which tokenizer),
``consolidated`` + ``kayla_chunks`` + ``chunk_dataset`` (``hierarchos chunk``), ``bpe``
(``hierarchos train-tokenizer``).
"""

from __future__ import annotations

from hierarchos_jax.data.options import FormatOptions, add_data_args, has_data_args


def build_train_data(args, tokenizer, *, vocab_size: int, batch_size: int, seq_len: int, chunk_size: int,
                     seed: int, use_rosa: bool = True, progress: bool = True):
    """Load the data the options name and return a :class:`~hierarchos_jax.data.pipeline.TrainData`.

    ``seq_len`` is ``--max-length``; with ``--auto-max-length`` the length found by the scan is
    ``TrainData.max_length``. Batches are padded to a multiple of ``chunk_size``.
    """
    from hierarchos_jax.data.pipeline import check_supervision, make_train_data
    from hierarchos_jax.data.sources import load_source

    if len(tokenizer) != int(vocab_size):
        tokenizer.check_vocab(int(vocab_size))
    loaded = load_source(args, tokenizer, max_length=int(seq_len), progress=progress)
    workers = getattr(args, "num_workers", -1)
    data = make_train_data(loaded, vocab_size=vocab_size, batch_size=batch_size, chunk_size=chunk_size, seed=seed,
                           bucketing=getattr(args, "length_bucketing", True),
                           window=getattr(args, "length_bucket_size", None),
                           threads=2 if workers is None or workers < 0 else workers, use_rosa=use_rosa)
    if progress:
        import sys

        print(data.stats.summary() + f"; {data.batches_per_epoch} batches per epoch", file=sys.stderr)
    opts = FormatOptions.from_args(args)
    check_supervision(data, prompt_completion_mode=opts.prompt_completion_mode,
                      train_prompt_tokens=opts.train_prompt_tokens,
                      strict=getattr(args, "strict_all_token_loss", True))
    return data


def __getattr__(name):
    if name == "TrainData":
        from hierarchos_jax.data.pipeline import TrainData

        return TrainData
    raise AttributeError(name)


__all__ = ["FormatOptions", "TrainData", "add_data_args", "build_train_data", "has_data_args"]
