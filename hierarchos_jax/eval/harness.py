"""Running lm-eval tasks on a :class:`~hierarchos_jax.eval.lm.HierarchosLM`, offline-safe.

* Task lookup: tasks found in ``include_path`` alone are loaded without indexing lm-eval's
  thousands of built-in task files; otherwise the full index (plus ``include_path``).
* Network: unless ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is already set, the Hugging
  Face Hub is probed once with a short connect timeout; when it cannot be reached, the
  run is done in offline mode (datasets on local disk and in the local cache load, nothing
  waits on the network), and a task whose data would have to be downloaded fails with one
  line naming the task and its dataset.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
from collections.abc import Sequence
from typing import Any

HUB_PROBE_TIMEOUT_S = 3.0
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


class EvalError(ValueError):
    """An evaluation cannot run (unknown task, dataset unavailable offline, ...): one line."""


def _env_true(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub endpoint (``HF_ENDPOINT``) opens within ``timeout``."""
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_wanted() -> bool:
    """Offline if the environment says so, else if the Hub cannot be reached."""
    for name in _OFFLINE_ENV:
        flag = _env_true(name)
        if flag is not None:
            return flag
    return not hub_reachable()


@contextlib.contextmanager
def hub_mode(offline: bool):
    """Offline (or not) for this block: the environment and the flags ``datasets`` and
    ``huggingface_hub`` read at import time, restored afterwards."""
    import datasets.config as dcfg
    import huggingface_hub.constants as hcst

    saved_env = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    saved = (hcst.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE)
    try:
        if offline:
            for k in _OFFLINE_ENV:
                os.environ[k] = "1"
            hcst.HF_HUB_OFFLINE = dcfg.HF_HUB_OFFLINE = dcfg.HF_DATASETS_OFFLINE = True
        yield
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        hcst.HF_HUB_OFFLINE, dcfg.HF_HUB_OFFLINE, dcfg.HF_DATASETS_OFFLINE = saved


def task_manager(tasks: Sequence[str], include_path: str | os.PathLike | None = None):
    """A ``TaskManager`` that knows ``tasks`` (only ``include_path`` if it has them all)."""
    from lm_eval.tasks import TaskManager

    if include_path is not None:
        if not os.path.exists(include_path):
            raise EvalError(f"{include_path}: no such task include path")
        local = TaskManager(include_path=str(include_path), include_defaults=False)
        if all(t in local.all_tasks for t in tasks):
            return local
        return TaskManager(include_path=str(include_path))
    return TaskManager()


def unknown_tasks(manager, tasks: Sequence[str]) -> list[str]:
    known = set(manager.all_tasks)
    return [t for t in tasks if t not in known]


def _dataset_of(manager, task: str) -> str | None:
    """The ``dataset_path`` of a task's YAML (following one ``include``), if it can be read."""
    entry = manager.task_index.get(task)
    cfg = dict(getattr(entry, "cfg", None) or {})
    if not cfg.get("dataset_path") and cfg.get("include") and getattr(entry, "yaml_path", None):
        import yaml

        try:
            class _Loose(yaml.SafeLoader):
                pass

            _Loose.add_multi_constructor("!", lambda loader, suffix, node: None)
            with open(entry.yaml_path.parent / cfg["include"], encoding="utf-8") as f:
                cfg = {**(yaml.load(f, Loader=_Loose) or {}), **cfg}
        except (OSError, ValueError, yaml.YAMLError):
            pass  # only used to name the dataset in an error message
    value = cfg.get("dataset_path")
    return str(value) if value else None


def run_tasks(lm, tasks: Sequence[str], *, limit: float | None = None, include_path=None,
              num_fewshot: int | None = None, verbosity: str = "WARNING", log_samples: bool = True,
              manager=None, offline: bool | None = None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of ``tasks`` with everything else at lm-eval's defaults
    (seeds, bootstrap); returns its results dict (with ``samples`` when logged)."""
    import lm_eval

    tasks = list(tasks)
    if not tasks:
        raise EvalError("no lm-eval tasks to run")
    manager = manager or task_manager(tasks, include_path)
    missing = unknown_tasks(manager, tasks)
    if missing:
        where = f" (nor in {include_path})" if include_path else " (use --include-path for local task YAMLs)"
        raise EvalError(f"unknown lm-eval task(s): {', '.join(missing)}{where}")
    offline = offline_wanted() if offline is None else offline
    kwargs: dict[str, Any] = {"model": lm, "tasks": tasks, "task_manager": manager, "verbosity": verbosity,
                              "log_samples": log_samples}
    if limit is not None:
        kwargs["limit"] = limit
    if num_fewshot is not None:
        kwargs["num_fewshot"] = num_fewshot
    with hub_mode(offline):
        try:
            results = lm_eval.simple_evaluate(**kwargs)
        except (ConnectionError, TimeoutError, OSError) as e:
            raise _data_error(manager, tasks, e, offline) from None
        except Exception as e:
            if _looks_like_download_failure(e):
                raise _data_error(manager, tasks, e, offline) from None
            raise
    if results is None:
        raise EvalError("lm-eval returned no results")
    return results


def _looks_like_download_failure(e: BaseException) -> bool:
    names = {type(x).__name__ for x in (e, e.__cause__, e.__context__) if x is not None}
    text = str(e).lower()
    return bool(names & {"DatasetNotFoundError", "LocalEntryNotFoundError", "OfflineModeIsEnabled",
                         "HfHubHTTPError", "ConnectError", "ConnectTimeout"}) \
        or "offline" in text or "couldn't reach" in text or "connection" in text


def _data_error(manager, tasks, e: BaseException, offline: bool) -> EvalError:
    named = [(t, _dataset_of(manager, t)) for t in tasks]
    datasets = ", ".join(f"{t} (dataset {d})" if d else t for t, d in named)
    why = "the Hugging Face Hub cannot be reached" if offline else "its download failed"
    first = " ".join(str(e).split())[:200]
    return EvalError(f"cannot load the data of task(s) {datasets}: not on local disk or in the local cache and "
                     f"{why} ({type(e).__name__}: {first})")


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{"task/metric": value}`` for every numeric metric (lm-eval's ``,none`` filter
    suffix dropped; other filters kept as ``metric,filter``)."""
    out: dict[str, float] = {}
    for task, metrics in (results.get("results") or {}).items():
        for key, value in metrics.items():
            if key == "alias" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key in ("sample_len", "sample_count"):
                continue
            name = key.removesuffix(",none")
            out[f"{task}/{name}"] = float(value)
    return out
