# Shared helpers of the Python module's tests: the repository's paths, the CLI, a safetensors reader.
import json
import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "models"
DEMO = ROOT / "models" / "outro-demo"
OMNI_DEMO = ROOT / "models" / "outro-omni-demo"


def outro_bin():
    b = os.environ.get("OUTRO_BIN")
    if not b:
        pytest.fail("OUTRO_BIN is not set (ctest sets it to build/outro)")
    return b


def run_cli(*args, check=True):
    """Runs the outro CLI; returns (returncode, stdout, stderr)."""
    p = subprocess.run([outro_bin(), *map(str, args)], capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"outro {' '.join(map(str, args))} failed: {p.stderr}")
    return p.returncode, p.stdout, p.stderr


_DTYPES = {"F32": np.float32, "I64": np.int64}


def read_safetensors(path):
    """The tensors of a .safetensors file (F32 / I64), as numpy arrays by name."""
    data = Path(path).read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + hlen])
    base = 8 + hlen
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        arr = np.frombuffer(data[base + a:base + b], dtype=_DTYPES[t["dtype"]])
        out[name] = arr.reshape(t["shape"])
    return out


def same_bits(a, b):
    """True when two float32 arrays have the same shape and the same bits everywhere."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))
