"""Starting `kobjectives` runs as subprocesses: several workers on 127.0.0.1
with `TF_CONFIG`, or one process with logical CPUs (shared by the
multi-worker and fault-tolerance tests)."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[2]

# A small masked-LM run: 3 rounds of 4 steps, global batch 8, no dropout
# (so a mirrored and a multi-worker run see the same numbers).
SMALL_MLM = [
    "train", "mlm", "--steps", "12", "--batch-size", "8", "--sequence-length", "32",
    "--set", "training.epochs=3", "--set", "data.max_documents=300",
    "--set", "tokenizer.vocabulary_size=300", "--set", "training.validation_batches=2",
    "--set", "training.warmup_steps=2", "--set", "model.dropout=0",
    "--set", "data.validation_fraction=0.2",
]


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def environment(tf_config=None, logical_cpus=None):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update(CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    if logical_cpus:
        env["KOBJECTIVES_LOGICAL_CPUS"] = str(logical_cpus)
    return env


def launch(args, log_path, tf_config=None, logical_cpus=None):
    """Starts `python -m kobjectives.cli ARGS`; stdout and
    stderr go to `log_path`."""
    log = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "kobjectives.cli", *args],
        cwd=REPO, env=environment(tf_config, logical_cpus), stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )


def cluster(num_workers):
    ports = free_ports(num_workers)
    workers = [f"127.0.0.1:{p}" for p in ports]
    return [
        {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
        for i in range(num_workers)
    ]


def launch_workers(args, log_dir, num_workers=2, tag="run"):
    return [
        launch(args, pathlib.Path(log_dir) / f"{tag}-worker{i}.log", tf_config=config)
        for i, config in enumerate(cluster(num_workers))
    ]


def wait(processes, timeout):
    """Waits for all; kills the rest (by their own process id) on timeout.
    Returns the exit codes (None for a killed process)."""
    deadline = time.time() + timeout
    codes = []
    for process in processes:
        try:
            codes.append(process.wait(timeout=max(1.0, deadline - time.time())))
        except subprocess.TimeoutExpired:
            kill(process)
            codes.append(None)
    return codes


def kill(process, sig=signal.SIGKILL):
    if process.poll() is None:
        os.killpg(process.pid, sig)  # its own session: the process and its children only
        process.wait()


def tail(path, lines=40):
    path = pathlib.Path(path)
    if not path.exists():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join(line for line in text.splitlines() if "━" not in line)[-6000:]


def wait_for(predicate, timeout, processes=(), poll=0.5):
    """Polls until `predicate()`; False if the time runs out or a process ends."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if any(p.poll() is not None for p in processes):
            return predicate()
        time.sleep(poll)
    return False
