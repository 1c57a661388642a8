"""Importing hpcstudy, its models and kernels never pulls in a GPU library."""

import subprocess
import sys


def test_no_gpu_library_is_imported():
    code = ("import sys, hpcstudy, hpcstudy.models, hpcstudy.cli, hpcstudy_kernels; "
            "bad = [m for m in ('cupy', 'cudf', 'numba', 'torch') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
