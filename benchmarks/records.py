"""One place where benchmark figures are stamped and appended to results/*.jsonl."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

RESULTS_DIR = Path(__file__).parent / "results"


def append(name: str, record: dict) -> dict:
    """Add machine, NumPy version and date; append to results/NAME.jsonl; print it."""
    record = {**record, "machine": f"{platform.node()} {os.cpu_count()} cores",
              "numpy": np.__version__, "date": time.strftime("%Y-%m-%d")}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / f"{name}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)
    return record
