"""``hierarchos info MODEL_DIR_OR_PRESET``: config summary and parameter count."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._common import CLIError, load

# File names a model directory may keep its config under, in order of preference.
CONFIG_NAMES = ("hierarchos_config.json", "config.json")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info",
        help="show a model's or preset's config and parameter count",
        description=(
            "MODEL_DIR_OR_PRESET is a model directory (holding hierarchos_config.json or "
            "config.json), a config .json file, or the name of a preset."
        ),
    )
    p.add_argument("target", metavar="MODEL_DIR_OR_PRESET")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--build", action="store_true",
                   help="also build the JAX model (random init) and count its parameters")
    p.set_defaults(func=run)


def _load_config(target: str):
    config = load("hierarchos_jax.config", "info")
    cls = config.HierarchosConfig
    path = Path(target)
    if path.is_dir():
        for name in CONFIG_NAMES:
            if (path / name).is_file():
                return cls.from_json_file(path / name), str(path / name)
        raise CLIError(
            f"{target}: no {' or '.join(CONFIG_NAMES)} in this directory"
        )
    if path.is_file():
        return cls.from_json_file(path), str(path)
    if path.suffix == ".json" or "/" in target or "\\" in target:
        raise FileNotFoundError(f"{target}: no such file or directory")
    return cls.from_preset(target), f"preset {target!r}"


def _as_dict(cfg: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        items = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    elif callable(getattr(cfg, "to_dict", None)):
        items = dict(cfg.to_dict())
    else:
        items = dict(vars(cfg))
    return {k: v for k, v in items.items() if not k.startswith("_")}


def _plain(value: Any) -> Any:
    """JSON fallback: mappings -> dict, arrays/sequences -> list, else str."""
    if isinstance(value, Mapping):
        return dict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def _show(value: Any) -> str:
    return repr(dict(value)) if isinstance(value, Mapping) else repr(value)


def run(args: argparse.Namespace) -> int:
    cfg, source = _load_config(args.target)
    fields = _as_dict(cfg)
    n_params = int(cfg.param_count())
    built = _built_param_count(cfg) if args.build else None
    if args.json:
        record = {"source": source, "param_count": n_params, "config": fields}
        if built is not None:
            record["built_param_count"] = built
        print(json.dumps(record, indent=2, sort_keys=True, default=_plain))
        return 0
    print(f"config: {source}")
    width = max((len(k) for k in fields), default=0)
    for key in sorted(fields):
        print(f"  {key:<{width}} = {_show(fields[key])}")
    print(f"parameters: {n_params:,} ({n_params / 1e6:.2f} M)")
    if built is not None:
        print(f"built JAX model: {built:,} parameters")
    return 0


def _built_param_count(cfg) -> int:
    """Instantiate the model abstractly (no memory for weights) and count its parameters."""
    nnx = load("flax.nnx", "info --build")
    jax = load("jax", "info --build")
    hierarchos = load("hierarchos_jax.model.hierarchos", "info --build")
    abstract = nnx.eval_shape(lambda: hierarchos.Hierarchos(cfg, rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    return int(sum(x.size for x in jax.tree.leaves(params)))
    return 0
