"""What every benchmark records about the machine it ran on (imported by the scripts beside it)."""

from __future__ import annotations

import datetime
import os
import platform
from importlib.metadata import version


def host_cpu() -> str:
    """The CPU model from /proc/cpuinfo (``platform.processor()`` where that is missing)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def host_facts() -> dict:
    """Date, CPU, cores, Python, jax/jaxlib versions and the load averages at this moment."""
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "host_cpu": host_cpu(),
            "host_cores": os.cpu_count(), "python": platform.python_version(), "jax": version("jax"),
            "jaxlib": version("jaxlib"), "load_avg": list(os.getloadavg())}
