"""A run killed with SIGKILL during training leaves a consistent store; the next run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from modelyard.pipeline import MetadataStore

from ._synthetic import make_csv, write_spec


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_sigkill_during_training_then_resume(tmp_path: Path, store_url: str) -> None:
    csv = make_csv(tmp_path / "p.csv", n=3000)
    # Many epochs with no early stop, so the kill lands inside training.
    write_spec(tmp_path / "spec.yaml", csv, mlp={"max_epochs": 400, "patience": 400})
    env = {**os.environ, "MODELYARD_STORE": store_url}
    proc = subprocess.Popen([sys.executable, "-m", "modelyard", "run", "spec.yaml", "--quiet"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with MetadataStore(store_url) as store:
            def training() -> bool:
                runs = store.list_runs(limit=1)
                return bool(runs) and any(e.step == "train.mlp" and e.status == "running"
                                          for e in store.executions(runs[0].id))

            _wait_for(training, 120, "training to start")
            time.sleep(1.0)  # well inside the epochs loop
            assert proc.poll() is None, proc.stderr.read().decode()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            killed = store.list_runs(limit=1)[0]
            assert killed.status == "running"  # nobody has looked yet
            statuses = {e.step: e.status for e in store.executions(killed.id)}
            assert statuses["data"] == "complete" and statuses["train.mlp"] == "running"
            assert store.check() == []  # consistent even before recovery: no record points at a missing file
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()

    # The next run marks the dead run aborted and resumes from the last finished step.
    write_spec(tmp_path / "spec.yaml", csv, mlp={"max_epochs": 400, "patience": 400})
    done = subprocess.run([sys.executable, "-m", "modelyard", "run", "spec.yaml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    # (this run trains the MLP fully; 3,000 rows x 400 epochs stays well under a minute)
    assert done.returncode == 0, done.stderr
    assert f"marked 1 interrupted run(s) as aborted: {killed.id}" in done.stderr
    with MetadataStore(store_url) as store:
        assert store.get_run(killed.id).status == "aborted"
        assert [e.status for e in store.executions(killed.id) if e.step == "train.mlp"] == ["aborted"]
        latest = store.list_runs(limit=1)[0]
        assert latest.status == "succeeded"
        statuses = {e.step: e.status for e in store.executions(latest.id)}
        assert statuses["data"] == "cached" and statuses["train.mlp"] == "complete"
        assert store.check() == []
    leftovers = [p for p in tmp_path.rglob("*.tmp*")]
    assert [p for p in leftovers if killed.id not in str(p)] == []
