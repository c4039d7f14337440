"""Run a script as two MultiWorkerMirroredStrategy workers on 127.0.0.1 (used by the tests
of multi-worker training and multi-worker input)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports that are free on 127.0.0.1 right now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_workers(script: Path, args_of: list[list[str]], timeout: int = 300) -> list[str]:
    """Start ``script`` once per worker (``args_of[i]`` its arguments) with a TF_CONFIG
    cluster of ``len(args_of)`` workers; wait for all; fail the test naming the worker
    that failed or the timeout. Returns each worker's output."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(len(args_of))]}
    procs = []
    for i, args in enumerate(args_of):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT),
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen([sys.executable, str(script), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = []
    for i, p in enumerate(procs):
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{script.name}: the workers did not finish in {timeout} s")
        assert p.returncode == 0, f"worker {i}:\n{out[-3000:]}"
        outputs.append(out)
    return outputs
