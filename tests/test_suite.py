"""The suite runner and the run store: caching, resume after kill -9, executors, concurrency."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from benchmark.cli import main
from benchmark.io import load_checkpoint

pytestmark = pytest.mark.slow  # end-to-end: processes, whole stages

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

# a 3-epoch smoke pretraining run, then SLF + PGD-20, in a separate process
SCRIPT = """
import dataclasses, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from benchmark.config import PRESETS
from benchmark.pipeline import Target, run_scheme
from benchmark.stage import RunOptions
preset = dataclasses.replace(PRESETS["smoke"], name="smoke", pretrain_epochs=3)
opts = RunOptions(results=Path(sys.argv[1]), progress=False)
rec = run_scheme(opts, Target("acl", {}, preset, "digits", 0, ("pgd20",)), "slf")
print(rec.metrics)
"""


def _records(results: Path) -> dict[str, dict]:
    out = {}
    for p in sorted((results / "records").rglob("*.json")):
        r = json.loads(p.read_text())
        out[str(p.relative_to(results))] = r["metrics"]
    return out


def _done_files(results: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in (results / "runs").rglob("done.json")}


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(straight)], env=ENV, capture_output=True, text=True,
                         check=True)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(killed)], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    last = None
    while time.time() < deadline:
        found = list((killed / "runs" / "pretrain").glob("*/last.pt")) if (killed / "runs").exists() else []
        if found:
            last = found[0]
            break
        time.sleep(0.02)
    assert last is not None, "no epoch checkpoint appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ck = load_checkpoint(last, kind="pretrain-state")
    assert ck["epoch"] < 3 and not (last.parent / "encoder.pt").exists()
    again = subprocess.run([sys.executable, "-c", SCRIPT, str(killed)], env=ENV, capture_output=True, text=True,
                           check=True)
    assert again.stdout == out.stdout
    a = load_checkpoint(next((straight / "runs" / "pretrain").glob("*/encoder.pt")), kind="encoder")
    b = load_checkpoint(next((killed / "runs" / "pretrain").glob("*/encoder.pt")), kind="encoder")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert _records(straight) == _records(killed)


SUITE = ["suite", "--preset", "smoke", "--methods", "simclr,acl", "--schemes", "slf", "--attacks", "pgd20",
         "--quiet"]


def test_executors_agree_and_rerun_is_cached(tmp_path):
    runner = CliRunner()
    results = {}
    for name, extra in (("local", []), ("pool", ["--executor", "pool", "--jobs", "2"]),
                        ("submitit", ["--executor", "submitit-local"])):
        r = runner.invoke(main, [*SUITE, "--results", str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
        results[name] = _records(tmp_path / name)
        assert (tmp_path / name / "leaderboard.md").read_text().count("| simclr") == 1
    assert len(results["local"]) == 2
    assert results["local"] == results["pool"] == results["submitit"]
    before = _done_files(tmp_path / "local")
    r = runner.invoke(main, [*SUITE, "--results", str(tmp_path / "local"), "--json"])
    assert r.exit_code == 0
    assert _done_files(tmp_path / "local") == before  # nothing re-ran


def test_two_suites_at_once_share_the_store(tmp_path):
    cmd = [sys.executable, "-m", "benchmark.cli", *SUITE, "--results", str(tmp_path)]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    recs = _records(tmp_path)
    assert len(recs) == 2
    for stage, n in (("pretrain", 2), ("finetune", 2), ("evaluate", 2)):
        dirs = list((tmp_path / "runs" / stage).iterdir())
        assert len(dirs) == n and all((d / "done.json").is_file() for d in dirs)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(
    "content, message",
    [
        ('methods = ["acl", "rcol"]\n', "unknown method 'rcol'"),
        ("seeds = [0, -1]\n", "seeds"),
        ('seeds = ["a"]\n', "seeds"),
        ('preset = "smoke"\nepochs = 3\n', "unknown key 'epochs'"),
        ('preset = "smoke"\nmethods = [\n', "not valid TOML"),
        ('schemes = ["slf", "xyz"]\n', "schemes: unknown value 'xyz'"),
        ('[params.acl]\neps = 2.0\n', "params.acl"),
        ('[slurm]\nqueue = "gpu"\n', "slurm: unknown key 'queue'"),
    ],
)
def test_bad_suite_files(tmp_path, content, message):
    f = tmp_path / "suite.toml"
    f.write_text(content)
    results = tmp_path / "results"
    r = CliRunner().invoke(main, ["suite", str(f), "--results", str(results)])
    assert r.exit_code != 0
    assert message in r.output
    assert "Traceback" not in r.output
    assert not results.exists()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_pool_workers_exit_when_acbench_is_killed(tmp_path):
    """kill -9 of a suite leaves no orphaned worker holding its memory: each worker watches its parent."""
    cmd = [sys.executable, "-m", "benchmark.cli", *SUITE[:-1], "--executor", "pool", "--jobs", "2",
           "--results", str(tmp_path), "--quiet"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and proc.poll() is None:
        workers = [c for c in _children(proc.pid) if "spawn_main" in _cmdline(c)]
        if len(workers) == 2:
            break
        time.sleep(0.1)
    assert len(workers) == 2, "the pool's workers did not start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)
