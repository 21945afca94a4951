"""Reliability and safety: bad inputs fail cleanly and change nothing; NaN runs stop with their last
good checkpoint; killed runs never leave a corrupt file; checkpoints are loaded safely.

Every bad-input case asserts: a non-zero exit, a message naming the problem, no traceback, and no
file changed (the results folder is snapshotted before and after, or must not come into being).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import methods
from attacks import AttackInputError, get_attack
from benchmark import load_classifier
from benchmark.checkpoints import ENCODER, load_encoder
from benchmark.cli import main
from benchmark.config import PRESETS
from benchmark.io import FORMAT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from benchmark.leaderboard import load_records
from benchmark.models import BackboneConfig, CheckpointMismatch, Classifier
from benchmark.pipeline import Target, run_pretrain_stage
from benchmark.pretrain import LAST, NonFiniteLoss
from benchmark.stage import RunOptions
from methods.simclr import SimCLR

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
QUIET = ["--preset", "smoke", "--quiet"]


# ---- helpers ------------------------------------------------------------------------------------


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def snapshot(root: Path) -> dict[str, tuple] | None:
    """Every file and folder under ``root`` with its size and mtime (None: ``root`` does not exist)."""
    if not root.exists():
        return None
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = ("dir",) if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


def assert_clean_failure(result, message: str) -> None:
    out = result.output
    assert result.exit_code not in (0, None), out
    # click handled it (SystemExit): an unexpected exception would be a traceback on a terminal
    assert isinstance(result.exception, SystemExit), f"{result.exception!r}\n{out}"
    assert "Traceback" not in out
    assert message in out, out


class RunsCode:
    """Unpickling this calls ``open(path, "w")``: the marker file appears if the pickle is executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_code_checkpoint(path: Path, marker: Path, kind: str = "encoder") -> None:
    """A file that looks like an acbench checkpoint but runs code when unpickled without weights_only."""
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "kind": kind, "state_dict": RunsCode(marker)}, buf)
    path.write_bytes(buf.getvalue())


def resave(path: Path, **changes) -> None:
    """Rewrite an acbench checkpoint with some fields changed (format and kind included)."""
    ck = load_checkpoint(path)
    ck.update(changes)
    payload = {k: v for k, v in ck.items() if k not in ("format_version", "kind")}
    buf = io.BytesIO()
    torch.save({"format_version": ck["format_version"], "kind": ck["kind"], **payload}, buf)
    path.write_bytes(buf.getvalue())


def acbench_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "acbench"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "benchmark.cli"]


# ---- a small finished store, copied into each case that needs one -------------------------------


@pytest.fixture(scope="module")
def store_template(tmp_path_factory) -> Path:
    """simclr smoke: pretrain, SLF finetune, PGD-20 evaluation, one record."""
    root = tmp_path_factory.mktemp("template") / "results"
    r = invoke("evaluate", "--method", "simclr", *QUIET, "--schemes", "slf", "--attacks", "pgd20",
               "--results", root)
    assert r.exit_code == 0, r.output
    return root


def _only(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, found
    return found[0]


def encoder_of(results: Path) -> Path:
    return _only(results, "runs/pretrain/*/encoder.pt")


def classifier_of(results: Path) -> Path:
    return _only(results, "runs/finetune/*/classifier.pt")


# ---- the bad-input battery ------------------------------------------------------------------------
# (id, setup(ctx) -> args, message). ctx: tmp (a folder), results (a fresh path, not created),
# store (a copy of the template results folder, or None), marker (a file that must never appear).


@dataclasses.dataclass
class Ctx:
    tmp: Path
    results: Path
    marker: Path
    store_template: Path | None = None

    def store(self) -> Path:
        shutil.copytree(self.store_template, self.results)
        return self.results


def _run(*extra):
    return lambda c: ["run", "--method", "simclr", *QUIET, "--attacks", "pgd20", "--results", c.results, *extra]


def _acl(*params):
    return lambda c: ["pretrain", "--method", "acl", *QUIET, "--results", c.results,
                      *[x for p in params for x in ("--param", p)]]


def _missing_cifar(c: Ctx):
    (c.tmp / "data").mkdir()
    return ["run", "--method", "simclr", *QUIET, "--dataset", "cifar10", "--data-dir", c.tmp / "data",
            "--results", c.results]


def _fake_cifar(c: Ctx, content: bytes):
    """Every CIFAR-10 batch file holds ``content``; the command pretrains on that folder."""
    base = c.tmp / "data" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta"):
        (base / name).write_bytes(content)
    return ["pretrain", "--method", "simclr", *QUIET, "--dataset", "cifar10", "--data-dir", c.tmp / "data",
            "--results", c.results]


def _garbage_cifar(c: Ctx):
    return _fake_cifar(c, os.urandom(4096))


def _code_cifar(c: Ctx):
    return _fake_cifar(c, pickle.dumps({"data": RunsCode(c.marker), "labels": [0]}, protocol=2))


def _results_is_file(c: Ctx):
    c.results.write_text("not a folder\n")
    return _run()(c)


def _empty_results(c: Ctx):
    c.results.mkdir()
    return ["leaderboard", "--results", c.results]


def _finetune_with(corrupt):
    """Replace the stored encoder.pt by a bad one, then finetune a scheme that needs it (ALF)."""

    def setup(c: Ctx):
        corrupt(c, encoder_of(c.store()))
        return ["finetune", "--method", "simclr", *QUIET, "--schemes", "alf", "--results", c.results]

    return setup


def _evaluate_with(corrupt):
    """Replace the stored classifier.pt by a bad one, then run an evaluation not yet done."""

    def setup(c: Ctx):
        corrupt(c, classifier_of(c.store()))
        return ["evaluate", "--method", "simclr", *QUIET, "--schemes", "slf", "--attacks", "clean",
                "--results", c.results]

    return setup


def _other_backbone(c: Ctx, path: Path) -> None:
    ck = load_checkpoint(path)
    resave(path, backbone={**ck["backbone"], "name": "resnet18-small"})


def _code(c: Ctx, path: Path) -> None:
    write_code_checkpoint(path, c.marker, kind=load_checkpoint(path)["kind"])


def _truncated(c: Ctx, path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty(c: Ctx, path: Path) -> None:
    path.write_bytes(b"")


def _version(c: Ctx, path: Path) -> None:
    resave(path, format_version=99)


def _classifier_as_encoder(c: Ctx, path: Path) -> None:
    shutil.copyfile(classifier_of(c.results), path)


def _plain_torch(c: Ctx, path: Path) -> None:
    torch.save({"weight": torch.zeros(3)}, path)


def _deleted(c: Ctx, path: Path) -> None:
    path.unlink()


def _suite(content: bytes | str, *extra):
    def setup(c: Ctx):
        f = c.tmp / "suite.toml"
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
        return ["suite", f, "--results", c.results, "--quiet", *extra]

    return setup


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
SUITE = pytest.mark.skipif("suite" not in main.commands, reason="no `acbench suite` command")

BATTERY = [
    ("unknown-method", lambda c: ["run", "--method", "simclrr", *QUIET, "--results", c.results],
     "unknown method 'simclrr' (did you mean 'simclr'?)"),
    ("unknown-method-pretrain", lambda c: ["pretrain", "--method", "advcll", *QUIET, "--results", c.results],
     "did you mean 'advcl'?"),
    ("unknown-dataset", _run("--dataset", "digit"), "unknown dataset 'digit' (did you mean 'digits'?)"),
    ("unknown-scheme", _run("--schemes", "slf,xyz"), "unknown scheme 'xyz'"),
    ("empty-scheme-list", _run("--schemes", ","), "empty scheme list"),
    ("unknown-attack", _run("--attacks", "pgd10"), "unknown attack 'pgd10' (did you mean 'pgd20'?)"),
    ("empty-attack-list", lambda c: ["run", "--method", "simclr", *QUIET, "--attacks", "", "--results",
                                     c.results], "empty attack list"),
    ("unknown-preset", lambda c: ["run", "--method", "simclr", "--preset", "fast", "--results", c.results],
     "Invalid value for '--preset'"),
    ("eps-above-1", _acl("eps=1.5"), "eps must be in (0, 1), got 1.5"),
    ("eps-zero", _acl("eps=0"), "eps must be in (0, 1), got 0"),
    ("unknown-param", _acl("epz=0.1"), "method 'acl' has no parameter 'epz'"),
    ("malformed-param", _acl("eps"), "--param takes NAME=VALUE, got 'eps'"),
    ("param-wrong-type", _acl("temperature=abc"), "parameter 'temperature' must be float, got 'abc'"),
    ("param-int-expected", _acl("attack_steps=2.5"), "parameter 'attack_steps' must be int, got 2.5"),
    ("param-nan", _acl("temperature=NaN"), "parameter 'temperature' must be finite"),
    ("param-negative-temperature", _acl("temperature=-1"), "temperature must be > 0"),
    ("negative-seed", _run("--seed", "-1"), "Invalid value for '--seed': -1 is not in the range x>=0"),
    ("seed-not-int", _run("--seed", "one"), "Invalid value for '--seed'"),
    ("missing-cifar", _missing_cifar,
     "CIFAR-10 not found in {tmp}/data (expected {tmp}/data/cifar-10-batches-py). Run again with --download"),
    ("garbage-cifar", _garbage_cifar, "data_batch_1: not a readable CIFAR pickle"),
    ("cifar-pickle-runs-code", _code_cifar, "data_batch_1: not a readable CIFAR pickle"),
    pytest.param("cuda-without-cuda", _run("--device", "cuda"), "CUDA is not available", marks=NO_CUDA),
    ("unknown-device", _run("--device", "tpu"), "unknown device 'tpu'"),
    ("unknown-precision", _run("--precision", "fp16"), "Invalid value for '--precision'"),
    ("results-is-a-file", _results_is_file, "is a file"),
    ("unknown-plugin", lambda c: ["--plugin", "no_such_acbench_plugin", "methods"],
     "cannot import plugin module 'no_such_acbench_plugin'"),
    ("leaderboard-empty-folder", _empty_results, "no records in"),
    ("leaderboard-missing-folder", lambda c: ["leaderboard", "--results", c.results], "no records in"),
    ("leaderboard-unknown-preset", lambda c: ["leaderboard", "--results", c.store(), "--preset", "fast"],
     "unknown preset 'fast'"),
    ("leaderboard-unknown-scheme", lambda c: ["leaderboard", "--results", c.store(), "--scheme", "xyz"],
     "unknown scheme 'xyz'"),
    ("encoder-other-backbone", _finetune_with(_other_backbone), "shape mismatches (first: conv1.weight: "),
    ("encoder-runs-code", _finetune_with(_code), "refusing to load"),
    ("encoder-truncated", _finetune_with(_truncated), "is truncated or corrupted"),
    ("encoder-empty-file", _finetune_with(_empty), "is truncated or corrupted"),
    ("encoder-format-version", _finetune_with(_version), f"has checkpoint format 99, this acbench reads {FORMAT_VERSION}"),
    ("encoder-wrong-kind", _finetune_with(_classifier_as_encoder), "holds a 'classifier' checkpoint, expected 'encoder'"),
    ("encoder-not-acbench", _finetune_with(_plain_torch), "is not an acbench checkpoint"),
    ("encoder-deleted", _finetune_with(_deleted), "encoder.pt does not exist"),
    ("classifier-other-backbone", _evaluate_with(_other_backbone), "does not fit the model"),
    ("classifier-runs-code", _evaluate_with(_code), "refusing to load"),
    ("classifier-truncated", _evaluate_with(_truncated), "is truncated or corrupted"),
    pytest.param("suite-unknown-key", _suite('preset = "smoke"\nmethod = ["acl"]\n'),
                 "unknown key 'method' (did you mean 'methods'?)", marks=SUITE),
    pytest.param("suite-unknown-method", _suite('methods = ["simclrr"]\n'), "did you mean 'simclr'?", marks=SUITE),
    pytest.param("suite-bad-seeds", _suite("seeds = [0, 0]\n"), "seeds: expected distinct non-negative", marks=SUITE),
    pytest.param("suite-seeds-option", _suite('preset = "smoke"\n', "--seeds", "0,a"), "--seeds", marks=SUITE),
    pytest.param("suite-unreadable-toml", _suite('methods = ["acl"\n'), "is not valid TOML", marks=SUITE),
    pytest.param("suite-binary-file", _suite(b"\xff\xfe\x00\x81garbage"), "suite.toml", marks=SUITE),
    pytest.param("suite-param-type", _suite('[params.acl]\ntemperature = "hot"\n'),
                 "parameter 'temperature' must be float", marks=SUITE),
    pytest.param("suite-missing-file", lambda c: ["suite", c.tmp / "nope.toml", "--results", c.results],
                 "nope.toml", marks=SUITE),
]


def _battery_params() -> list:
    out = []
    for case in BATTERY:
        if not hasattr(case, "marks"):
            out.append(pytest.param(case[1], case[2], id=case[0]))
        else:  # already a pytest.param (with marks): its id is its first value
            out.append(pytest.param(*case.values[1:], id=case.values[0], marks=case.marks))
    return out


@pytest.mark.parametrize("setup, message", _battery_params())
def test_bad_input(tmp_path, store_template, setup, message):
    ctx = Ctx(tmp=tmp_path, results=tmp_path / "results", marker=tmp_path / "marker-code-ran",
              store_template=store_template)
    args = setup(ctx)
    before = snapshot(ctx.results)
    inputs = snapshot(tmp_path)
    r = invoke(*args)
    assert_clean_failure(r, message.replace("{tmp}", str(tmp_path)))
    assert not ctx.marker.exists(), "a pickle ran code"
    if before is None:
        assert not ctx.results.exists(), "the results folder was created"
    else:
        assert snapshot(ctx.results) == before, "a file under the results folder changed"
    assert snapshot(tmp_path) == inputs, "a file changed"


def test_battery_is_large_enough():
    assert len(BATTERY) >= 20


# ---- the same checks through the library -----------------------------------------------------------


def test_code_checkpoint_payload_is_real(tmp_path):
    """The crafted file really would run code without weights_only (so the refusal tests mean something)."""
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    write_code_checkpoint(path, marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("variant", ["torch-zip", "raw-pickle"])
def test_code_checkpoint_refused(tmp_path, variant):
    path, marker = tmp_path / "classifier.pt", tmp_path / "ran"
    if variant == "torch-zip":
        write_code_checkpoint(path, marker, kind="classifier")
    else:
        path.write_bytes(pickle.dumps({"format_version": FORMAT_VERSION, "kind": "classifier",
                                       "state_dict": RunsCode(marker)}))
    with pytest.raises(CheckpointError, match="refusing to load .*classifier.pt"):
        load_classifier(path)
    assert not marker.exists()


def test_load_checkpoint_uses_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "x.pt"
    save_checkpoint(path, "thing", {"w": torch.ones(2)})
    seen = []
    real = torch.load

    def spy(*a, **kw):
        seen.append(kw.get("weights_only"))
        return real(*a, **kw)

    monkeypatch.setattr(torch, "load", spy)
    assert load_checkpoint(path, kind="thing")["w"].sum() == 2
    assert seen == [True]


def test_classifier_of_another_model_names_keys(tmp_path, store_template):
    """A classifier.pt whose weights come from another backbone: strict matching names the keys."""
    path = tmp_path / "classifier.pt"
    shutil.copyfile(classifier_of(store_template), path)
    ck = load_checkpoint(path)
    other = Classifier(BackboneConfig.from_dict({**ck["backbone"], "name": "resnet18-small"}), 10)
    resave(path, state_dict=other.state_dict())
    with pytest.raises(CheckpointMismatch) as e:
        load_classifier(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "unexpected keys (first: " in msg and "shape mismatches (first: " in msg
    # the first mismatch is named with both shapes
    assert "vs model (" in msg


def test_encoder_missing_keys_named(tmp_path, store_template):

    path = tmp_path / "encoder.pt"
    shutil.copyfile(encoder_of(store_template), path)
    ck = load_checkpoint(path)
    state = dict(ck["state_dict"])
    dropped = sorted(k for k in state if k.startswith("encoder."))[0]
    del state[dropped]
    resave(path, state_dict=state)
    with pytest.raises(CheckpointMismatch, match=r"1 missing keys \(first: " + dropped[len("encoder."):]):
        load_encoder(path)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated or corrupted"),
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "truncated or corrupted"),
    (lambda p: resave(p, format_version=FORMAT_VERSION + 1), f"checkpoint format {FORMAT_VERSION + 1}"),
    (lambda p: p.unlink(), "does not exist"),
    (lambda p: torch.save([1, 2, 3], p), "not an acbench checkpoint"),
], ids=["half", "first-100-bytes", "version", "missing", "not-a-dict"])
def test_damaged_classifier_through_library(tmp_path, store_template, damage, message):
    path = tmp_path / "classifier.pt"
    shutil.copyfile(classifier_of(store_template), path)
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        load_classifier(path)


def test_checkpoints_store_format_version_and_config(store_template):
    enc = load_checkpoint(encoder_of(store_template), kind="encoder")
    clf = load_checkpoint(classifier_of(store_template), kind="classifier")
    last = load_checkpoint(_only(store_template, "runs/pretrain/*/last.pt"), kind="pretrain-state")
    for ck in (enc, clf, last):
        assert ck["format_version"] == FORMAT_VERSION
    assert enc["config"]["method"] == "simclr" and enc["config"]["backbone"] == "resnet10-tiny"
    assert clf["config"]["scheme"] == "slf"


@pytest.mark.parametrize("attack", ["clean", "pgd20", "autoattack", "aa-lite"])
@pytest.mark.parametrize("images, message", [
    (lambda x: x * 255, r"in \[0, 1\]"),
    (lambda x: x - 0.5, r"in \[0, 1\]"),
    (lambda x: (x * 255).to(torch.uint8), "float images"),
], ids=["0-255", "centred", "uint8"])
def test_attack_rejects_images_outside_unit_box(attack, images, message):
    model = Classifier(BackboneConfig("resnet10-tiny"), 10).eval()
    x = torch.rand(2, 3, 16, 16)
    y = torch.tensor([0, 1])
    with pytest.raises(AttackInputError, match=message):
        get_attack(attack)(model, images(x), y)


# ---- leaderboard with one malformed record --------------------------------------------------------


def test_leaderboard_skips_malformed_record_with_warning(tmp_path, store_template):
    results = shutil.copytree(store_template, tmp_path / "results")
    bad = results / "records" / "smoke" / "digits-digits" / "simclr" / "seed7_slf.json"
    bad.write_text('{"schema": "acbench.record/1", "method": ')
    r = CliRunner().invoke(main, ["leaderboard", "--results", str(results)])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and str(bad) in r.stderr and "invalid JSON" in r.stderr
    assert "simclr" in r.stdout and "|" in r.stdout
    assert "Traceback" not in r.output


# ---- NaN: stop with a clear message, keep the last good checkpoint --------------------------------

NAN_METHOD = "test-nan-at-epoch2"


class NanAtEpoch2(SimCLR):
    def training_step(self, model, batch):
        loss, logs = super().training_step(model, batch)
        if batch.epoch == 2:
            loss = loss * float("nan")
        return loss, logs


@pytest.fixture
def nan_method():
    methods.register_method(NAN_METHOD)(NanAtEpoch2)
    yield NAN_METHOD
    methods.METHODS.unregister(NAN_METHOD)


def _check_kept_epoch1(results: Path) -> None:
    (d,) = list((results / "runs" / "pretrain").iterdir())
    assert load_checkpoint(d / LAST, kind="pretrain-state")["epoch"] == 1
    assert not (d / ENCODER).exists()
    assert not (d / "done.json").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, nan_method):
    preset = dataclasses.replace(PRESETS["smoke"], pretrain_epochs=3)
    opts = RunOptions(results=tmp_path / "results", progress=False)
    with pytest.raises(NonFiniteLoss, match=r"at epoch 2, step 1/\d+.*last good checkpoint \(epoch 1\)"):
        run_pretrain_stage(opts, Target(nan_method, {}, preset, "digits", 0))
    _check_kept_epoch1(tmp_path / "results")


def test_nan_loss_through_cli(tmp_path, nan_method, monkeypatch):
    monkeypatch.setitem(PRESETS, "smoke", dataclasses.replace(PRESETS["smoke"], pretrain_epochs=3))
    r = invoke("pretrain", "--method", nan_method, *QUIET, "--results", tmp_path / "results")
    assert_clean_failure(r, "non-finite loss or weights at epoch 2, step 1/")
    assert "last good checkpoint (epoch 1)" in r.output
    _check_kept_epoch1(tmp_path / "results")


# ---- killing a run at random moments never leaves a corrupt file ----------------------------------


def _check_store(results: Path) -> None:
    if not results.exists():
        return
    for p in results.rglob("*"):
        if p.is_dir() or p.name == ".lock":
            continue
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            continue  # an interrupted atomic write: never read as a real file
        if p.suffix == ".pt":
            load_checkpoint(p)
        elif p.suffix == ".json":
            json.loads(p.read_text())
        else:
            raise AssertionError(f"unexpected file {p}")
    if (results / "records").is_dir():
        records, warnings = load_records(results)
        assert not warnings, warnings


def _files(root: Path) -> dict[str, int]:
    out = {}
    if root.exists():
        for p in root.rglob("*"):
            try:
                out[str(p)] = p.stat().st_mtime_ns
            except FileNotFoundError:  # a temp file renamed meanwhile
                pass
    return out


def test_killed_runs_never_leave_corrupt_files(tmp_path):
    """SIGKILL at random moments: each run is killed after a random number (1-8) of writes under
    --results plus a random 0-0.3 s, so the kills land in every stage (pretraining, finetuning,
    evaluation, records) whatever the machine's speed; each run resumes where the last one died."""
    results, cwd = tmp_path / "R", tmp_path / "cwd"
    cwd.mkdir()
    cmd = [*acbench_cmd(), "run", "--method", "simclr", *QUIET, "--attacks", "pgd20", "--results", str(results)]
    rng = random.Random(20261128)
    for _ in range(4):
        writes, delay = rng.randint(1, 8), rng.uniform(0.0, 0.3)
        seen = _files(results)
        proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None and writes > 0:
            now = _files(results)
            writes -= sum(1 for k, v in now.items() if seen.get(k) != v)
            seen = now
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
        if os.environ.get("ACBENCH_TEST_VERBOSE"):
            print(proc.returncode, sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()))
        _check_store(results)
    # a leftover temp file in the records folder is never taken for a record
    recdir = results / "records" / "smoke" / "digits-digits" / "simclr"
    recdir.mkdir(parents=True, exist_ok=True)
    (recdir / ".seed0_slf.json.k1ll3d.tmp").write_text('{"schema": "acbench.rec')
    old_cwd = os.getcwd()
    os.chdir(cwd)  # the completing run in this process (saves a start-up), from the same directory
    try:
        done = invoke(*cmd[len(acbench_cmd()):])
    finally:
        os.chdir(old_cwd)
    assert done.exit_code == 0, done.output
    _check_store(results)
    records, warnings = load_records(results)
    assert not warnings
    assert sorted(r.scheme for r in records) == ["aff", "alf", "slf"]
    for r in records:
        assert isinstance(r.metrics["clean"], float) and isinstance(r.metrics["pgd20"], float)
        load_classifier(results / r.checkpoint)
    # nothing is written outside --results (run from another working directory)
    assert list(cwd.iterdir()) == []
