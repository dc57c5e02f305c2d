"""Data options of ``train``/``finetune`` (spec/cli.md §2.1, §2.4, §2.6) and the formatter settings.

``add_data_args`` adds every data option with the reference's spellings (dash and underscore);
the training CLI owns ``--max-length``, ``--batch-size``, ``--seed``, ``--tokenizer-path`` and
``--training-chunk-size``. ``FormatOptions.from_args`` sanitises the formatter settings as the
reference does (spec/training.md §3: non-numeric weights fall back to their defaults, negatives
become 0, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import math

# Options accepted for compatibility with reference command lines and saved configs, with no
# effect in this port (PyTorch DataLoader / token-cache tuning knobs).
_COMPAT_VALUE_OPTIONS = (
    ("token-cache-build-batch-size", int), ("token-cache-write-buffer-mb", int),
    ("hf-streaming-shuffle-buffer", int), ("hf-cache-chunks-per-file", int), ("pt-cache-size", int),
    ("prefetch-factor", int), ("length-bucket-auto-tolerance", float), ("length-bucket-auto-sample-size", int),
)
_COMPAT_FLAGS = ("no-streaming-datasets", "no-auto-length-bucket-size", "refresh-hf-shards")
_COMPAT_TOGGLES = ("hf-auto-shard", "cuda-prefetch")


def _spellings(name: str) -> list[str]:
    dash, under = f"--{name.replace('_', '-')}", f"--{name.replace('-', '_')}"
    return [dash] if dash == under else [dash, under]


def _dest(name: str) -> str:
    return name.replace("-", "_")


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Add the data options (sources, columns, templates, loss weights, batching) to ``parser``."""
    src = parser.add_argument_group("data sources")
    src.add_argument(*_spellings("train"), dest="train", default=None, metavar="PATH",
                     help="local data: a JSON/JSONL/CSV/Parquet/text file or a directory of them; "
                          "a pre-chunked JSONL file/directory with --pre-chunked-dataset; a directory "
                          "made by 'hierarchos chunk' (manifest.json) is detected by itself")
    src.add_argument(*_spellings("hf_dataset"), dest="hf_dataset", default=None, metavar="NAME",
                     help="Hugging Face dataset: a local dataset directory/file, or a Hub name "
                          "(needs the network; offline a Hub name is one error line)")
    src.add_argument(*_spellings("hf_dataset_config"), dest="hf_dataset_config", default=None, metavar="NAME",
                     help="configuration of --hf-dataset")
    src.add_argument(*_spellings("hf_dataset_split"), dest="hf_dataset_split", default="train", metavar="SPLIT",
                     help="split of --hf-dataset, slices like train[:10%%] allowed (default %(default)s)")
    src.add_argument(*_spellings("hf_dataset_revision"), dest="hf_dataset_revision", default=None, metavar="REV",
                     help="Hub branch/tag/commit of --hf-dataset")
    chunked = src.add_mutually_exclusive_group()
    chunked.add_argument(*_spellings("pre_chunked_dataset"), dest="pre_chunked_dataset", action="store_true",
                         help="--train holds pre-chunked JSONL rows (input_ids, labels, attention_mask) of "
                              "exactly --max-length tokens; rows of another length are skipped")
    chunked.add_argument(*_spellings("pre_pt_dataset"), dest="pre_pt_dataset", action="store_true",
                         help="--train is a consolidated chunk directory made by 'hierarchos chunk'; the "
                              "reference's .pt chunk directories are refused (re-create them with "
                              "'hierarchos chunk')")
    src.add_argument(*_spellings("dataset_size"), dest="dataset_size", type=int, default=None, metavar="N",
                     help="accepted for compatibility: every source here has a known size, so batches per "
                          "epoch are always counted from the data")

    fmt = parser.add_argument_group("data formatting and token weighting")
    fmt.add_argument(*_spellings("text_column"), dest="text_column", default=None, metavar="COL",
                     help="column of plain-text records (default: auto, 'text' then 'content')")
    fmt.add_argument(*_spellings("prompt_column"), dest="prompt_column", default=None, metavar="COL",
                     help="prompt/instruction column (with --completion-column)")
    fmt.add_argument(*_spellings("completion_column"), dest="completion_column", default=None, metavar="COL",
                     help="completion/response column (with --prompt-column)")
    tmpl = fmt.add_mutually_exclusive_group()
    tmpl.add_argument("--kayla", action="store_true",
                      help="Kayla template (instruction, feelings, thought-process, response)")
    tmpl.add_argument("--alpaca", action="store_true",
                      help="Alpaca template ('### Previous Context:' block); default columns instruction/output")
    fmt.add_argument(*_spellings("train_prompt_tokens"), dest="train_prompt_tokens", action="store_true",
                     default=True, help="prompt tokens are targets too (all-token objective; the default)")
    fmt.add_argument(*_spellings("mask_prompt_tokens"), dest="train_prompt_tokens", action="store_false",
                     help="prompt labels are -100 (response-only fine-tuning)")
    fmt.add_argument(*_spellings("allow_masked_active_labels"), dest="strict_all_token_loss",
                     action="store_false", default=True,
                     help="in prompt/completion mode with prompt training on, do not refuse data whose "
                          "real tokens carry -100 labels")
    fmt.add_argument(*_spellings("prompt_loss_weight"), dest="prompt_loss_weight", type=float, default=1.0,
                     metavar="W", help="loss weight of prompt tokens (default %(default)s)")
    fmt.add_argument(*_spellings("response_loss_weight"), dest="response_loss_weight", type=float, default=1.0,
                     metavar="W", help="loss weight of response tokens, and of every token in text mode "
                                       "(default %(default)s)")
    fmt.add_argument(*_spellings("response_boundary_loss_weight"), dest="response_boundary_loss_weight",
                     type=float, default=1.0, metavar="W",
                     help="multiplier of the first --response-boundary-tokens response tokens (default %(default)s)")
    fmt.add_argument(*_spellings("response_boundary_tokens"), dest="response_boundary_tokens", type=int, default=0,
                     metavar="N", help="how many initial response tokens (never EOS) get the multiplier "
                                       "(default %(default)s)")
    fmt.add_argument(*_spellings("min_response_tokens"), dest="min_response_tokens", type=int, default=1,
                     metavar="N", help="answer tokens kept when an overlong prompt is cut (default %(default)s)")
    fmt.add_argument(*_spellings("allow_empty_completions"), dest="drop_empty_completions", action="store_false",
                     default=True, help="keep records with a blank completion (trained as just EOS)")
    fmt.add_argument(*_spellings("auto_max_length"), dest="auto_max_length", action="store_true",
                     help="scan the data first and set the row length to the longest formatted record + 16, "
                          "rounded up to a multiple of 8")

    pipe = parser.add_argument_group("data pipeline and length bucketing")
    pipe.add_argument(*_spellings("no_length_bucketing"), dest="length_bucketing", action="store_false",
                      default=True, help="plain shuffled batches instead of length-grouped ones")
    pipe.add_argument(*_spellings("length_bucket_size"), dest="length_bucket_size", type=int, default=None,
                      metavar="N", help="samples per length-sorting window (default 50 x batch size)")
    pipe.add_argument(*_spellings("num_workers"), dest="num_workers", type=int, default=-1, metavar="N",
                      help="host threads that collate batches and compute ROSA ids (default -1: 2)")
    cache = parser.add_argument_group(
        "token caches", "formatted data is saved once and memory-mapped on later runs with the same data, "
        "tokenizer and options (default root: ~/.cache/hierarchos/token_cache)")
    for kind, what in (("local", "local --train files"), ("hf", "--hf-dataset")):
        cache.add_argument(*_spellings(f"{kind}-token-cache"), dest=f"{kind}_token_cache", action="store_true",
                           default=None, help=f"cache the formatted examples of {what} (the default)")
        cache.add_argument(*_spellings(f"no-{kind}-token-cache"), dest=f"{kind}_token_cache", action="store_false",
                           help=f"format {what} on every run, no cache")
        cache.add_argument(*_spellings(f"{kind}-token-cache-dir"), dest=f"{kind}_token_cache_dir", default=None,
                           metavar="DIR", help="cache root" + (" (else --hf-token-cache-dir)" if kind == "local"
                                                               else " (else --hf-shard-cache-dir)"))
        cache.add_argument(*_spellings(f"refresh-{kind}-token-cache"), dest=f"refresh_{kind}_token_cache",
                           action="store_true", help="rebuild the cache once")
    cache.add_argument(*_spellings("hf-shard-cache-dir"), dest="hf_shard_cache_dir", default=None,
                       help=argparse.SUPPRESS)
    compat = parser.add_argument_group("accepted for compatibility with reference command lines (no effect)")
    for name, typ in _COMPAT_VALUE_OPTIONS:
        compat.add_argument(*_spellings(name), dest=_dest(name), type=typ, default=None, help=argparse.SUPPRESS)
    for name in _COMPAT_FLAGS:
        compat.add_argument(*_spellings(name), dest=_dest(name), action="store_true", help=argparse.SUPPRESS)
    for name in _COMPAT_TOGGLES:
        compat.add_argument(*_spellings(name), dest=_dest(name), action="store_true", default=None,
                            help=argparse.SUPPRESS)
        compat.add_argument(*_spellings("no-" + name), dest=_dest(name), action="store_false",
                            help=argparse.SUPPRESS)
    compat.description = ("token-cache build tuning, HF auto-sharding, DataLoader prefetch and CUDA prefetch options "
                          "(--token-cache-build-batch-size, --pt-cache-size, --prefetch-factor, ...) are parsed "
                          "and ignored")


def has_data_args(args) -> bool:
    """Whether the command line names a data source (else the trainer uses its built-in task)."""
    return bool(getattr(args, "train", None) or getattr(args, "hf_dataset", None))


@dataclasses.dataclass(frozen=True)
class FormatOptions:
    """Settings of the record formatter (spec/training.md §3), already sanitised."""

    kayla: bool = False
    alpaca: bool = False
    text_column: str | None = None
    prompt_column: str | None = None
    completion_column: str | None = None
    train_prompt_tokens: bool = True
    prompt_loss_weight: float = 1.0
    response_loss_weight: float = 1.0
    response_boundary_loss_weight: float = 1.0
    response_boundary_tokens: int = 0
    min_response_tokens: int = 1
    drop_empty_completions: bool = True

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)
        for name in ("prompt_loss_weight", "response_loss_weight", "response_boundary_loss_weight"):
            put(name, _weight(getattr(self, name)))
        put("response_boundary_tokens", _count(self.response_boundary_tokens, bad=0))
        put("min_response_tokens", _count(self.min_response_tokens, bad=1))

    @property
    def custom_weights(self) -> bool:
        """Per-token weights exist only when a weight option is not its default (§3.5)."""
        return (abs(self.prompt_loss_weight - 1.0) > 1e-8 or abs(self.response_loss_weight - 1.0) > 1e-8
                or (self.response_boundary_tokens > 0 and abs(self.response_boundary_loss_weight - 1.0) > 1e-8))

    @property
    def prompt_completion_mode(self) -> bool:
        return bool(self.alpaca or self.kayla or self.prompt_column or self.completion_column)

    @classmethod
    def from_args(cls, args) -> FormatOptions:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: getattr(args, k) for k in fields if getattr(args, k, None) is not None})


def _weight(value, default: float = 1.0) -> float:
    try:
        w = float(value)
    except (TypeError, ValueError):
        return default
    if math.isnan(w):
        return 0.0  # max(0.0, nan) in the reference
    return max(0.0, w)


def _count(value, *, bad: int) -> int:
    if value is None:
        return 0
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return bad
