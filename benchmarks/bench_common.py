"""What every benchmark records about the machine it ran on (imported by the scripts here)."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform


def package_version(*names: str) -> str:
    """The installed version of the first of ``names`` that is installed, else "not installed"."""
    for n in names:
        try:
            return importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "not installed"


def machine_info(*packages: str) -> dict:
    """CPU model, its vector / matrix extensions, usable cores, Python, TensorFlow, Keras and
    the versions of ``packages``, and today's date."""
    model, flags = "unknown", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": model, "isa": " ".join(isa) or "n/a", "cores": cores,
            "python": platform.python_version(),
            "tensorflow": package_version("tensorflow", "tensorflow-cpu", "tf-nightly"),
            "keras": package_version("keras"), "date": datetime.date.today().isoformat()}
    info.update({p: package_version(p) for p in packages})
    return info


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (``"VmRSS"``: resident set now, ``"VmHWM"``: its
    peak since the process started or since ``/proc/self/clear_refs`` was written "5")."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")
