"""The ``acbench`` command line end to end on the ``smoke`` preset, in temporary results folders.

AutoAttack on a barely trained smoke model is slow (a point that no attack can flip costs AutoAttack
its full budget, ~20 s on a CPU), so the CLI runs use ``--attacks pgd20``; AutoAttack's agreement
with ``pyautoattack`` called directly is checked on a few test images at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import methods
from attacks import get_attack
from benchmark import load_classifier
from benchmark.cli import main
from benchmark.config import EPS, PRESETS
from benchmark.stage import RunOptions, dataset_for, run_once
from benchmark.stages import FinetuneStage, PretrainStage

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SMOKE = ["--preset", "smoke", "--quiet"]
# every registered method (the registry, so a new method cannot be missed), and a floor of names that
# must stay registered
ALL_METHODS = set(methods.list_methods())
BUILTIN_METHODS = {"simclr", "acl", "rocl", "rocl-ip", "rocl-hn", "rocl-iphn", "advcl", "advcl-ip", "advcl-hn",
                   "advcl-iphn", "dynacl", "acl-air", "dynacl-air", "deacl", "deacl-teacher"}
RUN = ["run", "--method", "simclr", *SMOKE, "--attacks", "pgd20", "--json"]


def invoke(*args):
    r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


@contextlib.contextmanager
def working_dir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def stage_files(results: Path) -> dict[str, int]:
    """mtimes of every stage's done.json and checkpoints: a re-run that redoes a stage changes one."""
    return {str(p.relative_to(results)): p.stat().st_mtime_ns
            for pattern in ("runs/*/*/done.json", "runs/*/*/*.pt") for p in results.glob(pattern)}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`acbench run --method simclr --preset smoke --attacks pgd20 --json`, from an empty working directory."""
    base = tmp_path_factory.mktemp("cli")
    results, cwd = base / "results", base / "cwd"
    cwd.mkdir()
    with working_dir(cwd):
        r = invoke(*RUN, "--results", results)
    assert list(cwd.iterdir()) == [], "something was written outside --results"
    return results, json.loads(r.stdout)


@pytest.fixture(scope="module")
def smoke_data():
    return dataset_for(RunOptions(), "digits", PRESETS["smoke"].image_size)


# ---- methods ------------------------------------------------------------------------------------


def test_methods_lists_every_method():
    assert BUILTIN_METHODS <= ALL_METHODS
    out = invoke("methods").stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert ALL_METHODS <= set(names) and len(names) == len(set(names))


def test_methods_json_has_paper_recipes():
    described = json.loads(invoke("methods", "--json").stdout)
    by_name = {d["name"]: d for d in described}
    assert ALL_METHODS <= set(by_name)
    for name in ALL_METHODS:
        d = by_name[name]
        recipe = d["paper_recipe"]
        assert recipe["epochs"] >= 1 and recipe["batch_size"] >= 2 and recipe["lr"] > 0
        assert recipe["optimizer"] in ("sgd", "lars", "adam")
        assert isinstance(d["params"], dict) and d["paper"] and d["summary"]


# ---- run: records, checkpoint, re-run ------------------------------------------------------------


@pytest.mark.slow
def test_run_writes_three_records_with_the_protocol_schema(smoke_run):
    results, printed = smoke_run
    assert sorted(r["scheme"] for r in printed) == ["aff", "alf", "slf"]
    for rec in printed:
        path = results / "records" / "smoke" / "digits-digits" / "simclr" / f"seed0_{rec['scheme']}.json"
        assert json.loads(path.read_text()) == rec
        assert rec["schema"] == "acbench.record/2"
        assert (rec["method"], rec["dataset"], rec["finetune_dataset"], rec["preset"]) == (
            "simclr", "digits", "digits", "smoke")
        assert rec["seed"] == 0 and rec["selection"] == "last" and rec["backbone"] == "resnet10-tiny"
        assert rec["method_params"] == {"temperature": 0.5, "init": "default", "crop_scale_min": 0.08}
        m = rec["metrics"]
        assert {"clean", "pgd20", "autoattack"} <= set(m)
        for k in ("clean", "pgd20"):
            assert isinstance(m[k], float) and 0 <= m[k] <= 100
        assert m["autoattack"] is None  # not run: null, never a string
        assert m["pgd20"] <= m["clean"] or any(f["kind"] == "invariant" for f in rec["flags"])
        assert rec["n_test"] == PRESETS["smoke"].eval.n_test
        assert rec["threat_model"] == "Linf" and rec["eps"] == pytest.approx(EPS, abs=1e-7)
        assert isinstance(rec["flags"], list)
        assert set(rec["stages"]) >= {"pretrain", "finetune"}
        assert rec["checkpoint"] == f"runs/finetune/{rec['stages']['finetune']}/classifier.pt"
        assert not Path(rec["checkpoint"]).is_absolute()
        cost = rec["cost"]
        assert all(isinstance(cost[k], (int, float)) for k in ("pretrain_s", "finetune_s", "eval_s"))
        assert cost["device"] == "cpu" or cost["device"] == "cuda"
        assert {"acbench", "torch", "pyautoattack"} <= set(rec["versions"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", rec["created"])


@pytest.mark.slow
def test_record_checkpoint_opens_with_load_classifier(smoke_run, smoke_data):
    results, printed = smoke_run
    n = PRESETS["smoke"].eval.n_test
    x = smoke_data.test_x[:n].float() / 255
    y = smoke_data.test_y[:n]
    for rec in printed:
        model = load_classifier(results / rec["checkpoint"])
        assert isinstance(model, torch.nn.Module) and not model.training
        assert all(not m.training for m in model.modules())
        with torch.no_grad():
            logits = model(x)
        assert logits.shape == (n, smoke_data.num_classes) and logits.dtype == torch.float32
        # the record's clean accuracy is what the checkpoint gives on the first n test images
        acc = round(100.0 * (logits.argmax(1) == y).sum().item() / n, 4)
        assert acc == rec["metrics"]["clean"]


@pytest.mark.slow
def test_rerun_is_a_noop_with_identical_metrics(smoke_run):
    results, printed = smoke_run
    before = stage_files(results)
    dirs = sorted(p.name for p in (results / "runs").glob("*/*"))
    again = json.loads(invoke(*RUN, "--results", results).stdout)
    assert stage_files(results) == before, "a stage was re-run"
    assert sorted(p.name for p in (results / "runs").glob("*/*")) == dirs
    assert [r["metrics"] for r in again] == [r["metrics"] for r in printed]
    assert [r["stages"] for r in again] == [r["stages"] for r in printed]


@pytest.mark.slow
def test_leaderboard_renders_the_method(smoke_run):
    results, _ = smoke_run
    md = invoke("leaderboard", "--results", results).stdout
    assert "simclr" in md and "|" in md
    rows = [line for line in md.splitlines() if line.startswith("|") and "simclr" in line]
    assert rows
    as_json = json.loads(invoke("leaderboard", "--results", results, "--format", "json").stdout)
    assert "simclr" in json.dumps(as_json)
    assert "simclr" in invoke("leaderboard", "--results", results, "--format", "csv").stdout


# ---- the stage commands one by one ---------------------------------------------------------------


@pytest.mark.slow
def test_pretrain_finetune_evaluate_commands(tmp_path):
    results = tmp_path / "results"
    info = json.loads(invoke("pretrain", "--method", "simclr", *SMOKE, "--json", "--results", results).stdout)
    assert info["stage"] == "pretrain" and Path(info["checkpoint"]).is_file()
    pre_done = Path(info["dir"]) / "done.json"
    mtime = pre_done.stat().st_mtime_ns

    out = json.loads(invoke("finetune", "--method", "simclr", *SMOKE, "--schemes", "slf", "--json",
                            "--results", results).stdout)
    assert [o["scheme"] for o in out] == ["slf"] and Path(out[0]["checkpoint"]).is_file()
    assert pre_done.stat().st_mtime_ns == mtime, "finetune re-ran pretraining"
    assert not load_classifier(out[0]["checkpoint"]).training

    recs = json.loads(invoke("evaluate", "--method", "simclr", *SMOKE, "--schemes", "slf", "--attacks", "pgd20",
                             "--json", "--results", results).stdout)
    assert len(recs) == 1 and recs[0]["scheme"] == "slf"
    assert recs[0]["metrics"]["autoattack"] is None and isinstance(recs[0]["metrics"]["pgd20"], float)
    assert results / recs[0]["checkpoint"] == Path(out[0]["checkpoint"])
    assert len(list((results / "records").rglob("*.json"))) == 1
    assert pre_done.stat().st_mtime_ns == mtime


# ---- plugins -------------------------------------------------------------------------------------

PLUGIN = '''
from methods import register_method
from methods.simclr import SimCLR


@register_method("{name}")
class Mine(SimCLR):
    summary = "a user's SimCLR variant, loaded with --plugin"
'''


def test_plugin_module_registers_a_method(tmp_path):
    (tmp_path / "acb_test_plugin_cli.py").write_text(PLUGIN.format(name="my-simclr"))
    out = subprocess.run([sys.executable, "-m", "benchmark.cli", "--plugin", "acb_test_plugin_cli", "methods"],
                         env={**ENV, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("my-simclr"))
    assert "loaded with --plugin" in line
    assert ALL_METHODS <= {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_plugin_method_runs_in_process(tmp_path, monkeypatch):
    (tmp_path / "acb_test_plugin_inproc.py").write_text(PLUGIN.format(name="my-simclr-inproc"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        described = json.loads(invoke("--plugin", "acb_test_plugin_inproc", "methods", "--json").stdout)
        mine = next(d for d in described if d["name"] == "my-simclr-inproc")
        assert mine["paper_recipe"]["epochs"] >= 1
        info = json.loads(invoke("--plugin", "acb_test_plugin_inproc", "pretrain", "--method", "my-simclr-inproc",
                                 *SMOKE, "--json", "--results", tmp_path / "results").stdout)
        assert Path(info["checkpoint"]).is_file()
    finally:
        methods.METHODS.unregister("my-simclr-inproc")
        sys.modules.pop("acb_test_plugin_inproc", None)


# ---- AutoAttack through acbench == pyautoattack called directly ----------------------------------


@pytest.mark.slow
def test_autoattack_equals_pyautoattack(smoke_run, smoke_data):
    """``get_attack("autoattack", seed=0)`` == ``pyautoattack.AutoAttack(..., version="standard", seed=0)``
    on the first n test images of a smoke classifier, loaded with ``load_classifier``.

    The smoke classifiers are close to constant: the few images they get right, no attack can flip,
    and each such image costs AutoAttack its full budget (~20 s on a CPU). So the classifier here is
    the smoke encoder with a longer SLF finetuning, and n runs up to its first correct test image
    (the images before it are misclassified already and cost nothing)."""
    from pyautoattack import AutoAttack

    results, printed = smoke_run
    smoke = PRESETS["smoke"]
    longer = dataclasses.replace(
        smoke, finetune={**smoke.finetune, "slf": dict(epochs=20, batch_size=32, lr=2.0, milestones=())})
    opts = RunOptions(results=results, progress=False)
    pre = PretrainStage(opts, "simclr", {}, smoke, "digits", 0)
    key = run_once(FinetuneStage(pre, "slf", longer, "digits", 0), opts)
    model = load_classifier(opts.store.dir("finetune", key) / "classifier.pt")
    x, y = smoke_data.test_x[:32].float() / 255, smoke_data.test_y[:32]
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).nonzero().flatten().tolist()
    assert correct, "the classifier gets none of the first 32 test images right"
    n = correct[0] + 1
    x, y = x[:n], y[:n]

    ours = get_attack("autoattack", seed=0)(model, x, y)
    ref, _ = AutoAttack(model, norm="Linf", eps=8 / 255, version="standard", seed=0).run_standard_evaluation(x, y)
    with torch.no_grad():
        acc_ours = (model(ours).argmax(1) == y).float().mean().item()
        acc_ref = (model(ref).argmax(1) == y).float().mean().item()
    assert acc_ours == acc_ref
    assert torch.equal(ours, ref)
    assert (ours - x).abs().max() <= 8 / 255 + 1e-6 and ours.min() >= 0 and ours.max() <= 1


# ---- perf and protocols ----------------------------------------------------------------------------


def test_perf_json_and_markdown(tmp_path):
    from benchmark.perf import KEYS

    out = tmp_path / "perf.md"
    r = invoke("perf", "--method", "acl", "--preset", "smoke", "--steps", "1", "--rounds", "1", "--warmup", "0",
               "--json", "--out", out)
    (report,) = json.loads(r.stdout)
    assert set(KEYS) <= set(report) and report["method"] == "acl"
    assert report["passes_per_image"]["forward"] + report["passes_per_image"]["input_backward"] + \
        2 * report["passes_per_image"]["weight_backward"] == 32  # ACL: 4K + 12 at K = 5
    md = out.read_text()
    assert "| method" in md and "harness img/s" in md and "ratio" in md


def test_perf_epochs_json_and_markdown(tmp_path):
    out = tmp_path / "epochs.md"
    r = invoke("perf", "--method", "acl", "--preset", "smoke", "--epochs", "1", "--images", "64", "--json",
               "--out", out)
    (report,) = json.loads(r.stdout)
    assert report["steps_per_epoch"] == 2 and len(report["epoch_seconds"]) == 1 and report["images"] == 64
    assert "| acl" in out.read_text() and "projected h" in out.read_text()


@pytest.mark.parametrize("args, message", [
    ([], "--method"),
    (["--method", "acll"], "did you mean 'acl'"),
    (["--method", "acl", "--images", "64"], "give --epochs too"),
    (["--method", "acl", "--epochs", "2"], "cannot time 2"),
])
def test_perf_bad_input(args, message):
    r = CliRunner().invoke(main, ["perf", *args, "--preset", "smoke"])
    assert r.exit_code != 0 and message in r.output


@pytest.mark.slow
def test_robustssl_protocol_on_smoke(tmp_path):
    recs = json.loads(invoke("run", "--method", "acl", *SMOKE, "--protocol", "robustssl", "--schemes", "aff",
                             "--attacks", "pgd20", "--json", "--results", tmp_path).stdout)
    (rec,) = recs
    assert rec["protocol"] == "robustssl" and rec["finetune"]["dual_bn"] is True
    assert rec["finetune"]["milestones"] == [] and rec["finetune"]["batch_size"] == 32  # smoke scales it
    assert any(f["kind"] == "protocol-deviation" for f in rec["flags"])
    assert "robustssl" in str(tmp_path / rec["checkpoint"]) or (tmp_path / rec["checkpoint"]).is_file()
    uniform = json.loads(invoke("run", "--method", "acl", *SMOKE, "--schemes", "aff", "--attacks", "pgd20",
                                "--json", "--results", tmp_path).stdout)[0]
    assert uniform["stages"]["pretrain"] == rec["stages"]["pretrain"]  # one pretraining, two protocols
    assert uniform["stages"]["finetune"] != rec["stages"]["finetune"] and uniform["protocol"] == "uniform"


@pytest.mark.parametrize("method, why", [("simclr", "settings only for"), ("acl-air", "no ACL-AIR checkpoint")])
def test_robustssl_protocol_refuses_methods_it_has_no_settings_for(tmp_path, method, why):
    r = CliRunner().invoke(main, ["run", "--method", method, *SMOKE, "--protocol", "robustssl",
                                  "--results", str(tmp_path)])
    assert r.exit_code == 1 and f"method '{method}' has no robustssl protocol" in r.output and why in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_transfer_run_renders_its_own_table(tmp_path):
    """digits -> synthetic on smoke: the CPU stand-in for CIFAR -> STL-10."""
    (rec,) = json.loads(invoke("run", "--method", "simclr", *SMOKE, "--finetune-dataset", "synthetic",
                               "--schemes", "slf", "--attacks", "pgd20", "--json", "--results", tmp_path).stdout)
    assert (rec["dataset"], rec["finetune_dataset"]) == ("digits", "synthetic")
    assert (tmp_path / "records" / "smoke" / "digits-synthetic" / "simclr" / "seed0_slf.json").is_file()
    md = invoke("leaderboard", "--results", tmp_path).stdout
    assert "digits → synthetic" in md


# ---- checks that fail before anything is written -------------------------------------------------


@pytest.mark.slow
def test_a_classifier_of_another_class_count_is_refused_in_one_line(tmp_path):
    """Every scheme trains a head for the dataset it finetunes on, so a transfer to a dataset of
    another class count is fine (RobustSSL: CIFAR-100 -> STL-10). A classifier whose head does not
    match the dataset it would be evaluated on (a store edited by hand) is one line, nothing written."""
    from benchmark.io import load_checkpoint, save_checkpoint

    (rec,) = json.loads(invoke("run", "--method", "simclr", *SMOKE, "--schemes", "slf", "--attacks", "clean",
                               "--json", "--results", tmp_path).stdout)
    path = tmp_path / rec["checkpoint"]
    ck = load_checkpoint(path, kind="classifier")
    ck["num_classes"] = 3
    ck["state_dict"]["fc.weight"] = ck["state_dict"]["fc.weight"][:3]
    ck["state_dict"]["fc.bias"] = ck["state_dict"]["fc.bias"][:3]
    save_checkpoint(path, "classifier", {k: v for k, v in ck.items() if k not in ("kind", "format_version")})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = CliRunner().invoke(main, ["run", "--method", "simclr", *SMOKE, "--schemes", "slf", "--attacks", "pgd20",
                                  "--results", str(tmp_path)])  # a new evaluate stage on the same finetuning
    assert r.exit_code == 1, r.output
    (line,) = r.output.strip().splitlines()
    assert "a 3-class classifier cannot be evaluated on digits (10 classes)" in line and str(path) in line
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("command", [
    ["suite", "--methods", "simclr", "--datasets", "cifar10", "--executor", "local"],
    ["run", "--method", "simclr", "--dataset", "cifar10"],
])  # fmt: skip
def test_missing_cifar_c_file_fails_before_any_job(tmp_path, command):
    """A missing CIFAR-10-C file: one line naming it and its folder, before any stage runs (the
    suite's pre-check; `acbench run` goes through the same one)."""
    from tests.test_corruptions import write_cifar_c
    from tests.test_data import write_cifar10

    data, results = tmp_path / "data", tmp_path / "results"
    write_cifar10(data, per_batch=240, n_test=64)  # room for the 1,000 validation images
    folder = write_cifar_c(data)  # gaussian_noise and fog only
    r = CliRunner().invoke(main, [*command, "--preset", "smoke", "--quiet", "--schemes", "slf", "--attacks",
                                  "pgd20,corruption", "--data-dir", str(data), "--results", str(results)])
    assert r.exit_code == 1, r.output
    (line,) = r.output.strip().splitlines()
    assert ".npy not found in" in line and str(folder) in line and "Traceback" not in line
    assert not (results / "runs").exists() and not (results / "records").exists()
