"""What the memory benchmarks share: one measurement per fresh subprocess,
and the CPU's name for the record."""

import json
import os
import platform
import subprocess
import sys


def run_child(script, args, timeout):
    """Runs `python script *args` (the repository root on `PYTHONPATH`) and
    returns the JSON object of the last stdout line that starts with `{`,
    or `{"error": ...}` on a timeout or a crash."""
    command = [sys.executable, os.path.abspath(script), *args]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": (done.stderr or done.stdout)[-800:]}


def cpu_model():
    """The CPU's model name (`lscpu`), or the platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
