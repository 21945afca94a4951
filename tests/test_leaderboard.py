"""Leaderboard: fixed records -> tables, compared to snapshots in tests/snapshots/.

Regenerate the snapshots after an intended change with
``ACBENCH_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_leaderboard.py`` and review the diff.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.errors import ConfigError, UnknownName
from benchmark.leaderboard import build_leaderboard, load_records, load_reported
from benchmark.leaderboard_reported import shipped_reported_path
from benchmark.protocols import ROBUSTSSL_DEVIATIONS, protocol_flags
from benchmark.records import Flag, Record
from benchmark.render import render, robustbench_entry, write_plots

SNAPSHOTS = Path(__file__).parent / "snapshots"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPS = round(8 / 255, 7)  # as the pipeline writes it

# quick preset, digits -> digits: (clean, pgd20, autoattack) per method at SLF; schemes shift all
# three, seeds add a small fixed jitter.
BASE = {"rocl-ip": (78.0, 46.0, 42.0), "acl": (80.0, 42.0, 38.0), "advcl": (83.0, 39.0, 33.0)}
SCHEME_SHIFT = {"slf": 0.0, "alf": -2.5, "aff": 3.0}
SEED_JITTER = {0: (0.0, 0.0, 0.0), 1: (1.25, 0.5, 0.75), 2: (-0.5, -1.0, -0.25)}


def record(method, scheme, seed, clean, pgd20, aa, **over) -> Record:
    fields = {
        "method": method,
        "dataset": "digits",
        "finetune_dataset": "digits",
        "preset": "quick",
        "seed": seed,
        "scheme": scheme,
        "selection": "last",
        "backbone": "resnet18-small",
        "metrics": {"clean": clean, "pgd20": pgd20, "autoattack": aa},
        "n_test": 360,
        "threat_model": "Linf",
        "eps": EPS,
        "stages": {"pretrain": f"pre-{method}-{seed}", "finetune": f"ft-{method}-{scheme}-{seed}"},
        "checkpoint": f"runs/finetune/ft-{method}-{scheme}-{seed}/classifier.pt",
        "cost": {"pretrain_s": 1.0, "finetune_s": 1.0, "eval_s": 1.0, "device": "cpu"},
        "versions": {"acbench": "0.1.0"},
        "created": "2026-11-28T19:40:00Z",
    }
    return Record(**(fields | over))


def make_records() -> list[Record]:
    """3 methods x 3 schemes x 3 seeds (quick, digits) plus the special cases."""
    records = []
    for method, (c, p, a) in BASE.items():
        for scheme, shift in SCHEME_SHIFT.items():
            for seed, (dc, dp, da) in SEED_JITTER.items():
                rec = record(method, scheme, seed, c + shift + dc, p + shift + dp, a + shift + da)
                if method == "acl":
                    rec = rec.replace(flags=(Flag("recipe-deviation", "epochs 10 (paper 1000)"),))
                if (method, scheme, seed) == ("advcl", "alf", 2):
                    rec = rec.replace(metrics=rec.metrics | {"autoattack": None})  # not run
                if (method, scheme, seed) == ("rocl-ip", "slf", 1):
                    warning = (
                        "autoattack: Square Attack has decreased the robust accuracy of 0.28%. "
                        "This might indicate that the robustness evaluation using AutoAttack is "
                        "unreliable."
                    )  # the pipeline keeps it in both places
                    rec = rec.replace(
                        autoattack_warnings=(warning,), flags=(Flag("autoattack-warning", warning),)
                    )
                if (method, scheme, seed) == ("advcl", "aff", 0):
                    broken = rec.metrics | {"autoattack": rec.metrics["pgd20"] + 5.0}  # invariant
                    invariant = Flag("invariant", "autoattack 47.00 > pgd20 42.00")  # pipeline's
                    rec = rec.replace(metrics=broken, flags=(invariant,))
                records.append(rec)
    # a method with one seed, one scheme and no AutoAttack: ranks last, flagged
    records.append(record("simclr", "slf", 0, 90.0, 1.0, None))
    # the paper preset under the robustssl protocol (with the flags the pipeline writes): acl
    # meets the RobustSSL numbers, advcl-ip has no reported mapping
    paper = {"dataset": "cifar10", "finetune_dataset": "cifar10", "preset": "paper"}
    paper |= {"n_test": 10000, "backbone": "resnet18"}
    robustssl = paper | {"protocol": "robustssl"}
    for method, scheme, metrics in [
        ("acl", "slf", (79.0, 41.5, 38.5)),
        ("acl", "alf", (76.0, 43.0, 40.0)),
        ("acl", "aff", (81.0, 52.0, 49.0)),
        ("advcl-ip", "slf", (82.0, 44.0, 41.0)),
    ]:
        flags = protocol_flags("robustssl", method, scheme, "cifar10", "cifar10")
        records.append(record(method, scheme, 0, *metrics, **robustssl, flags=flags))
    # a transfer whose release run left layers at initialisation: a flag of its own
    transfer = robustssl | {"dataset": "cifar100", "finetune_dataset": "stl10", "n_test": 8000}
    flags = protocol_flags("robustssl", "advcl-ip", "aff", "cifar100", "stl10")
    records.append(record("advcl-ip", "aff", 0, 50.0, 25.0, 22.0, **transfer, flags=flags))
    # the uniform protocol at the paper preset: never meets reported numbers
    records.append(record("acl", "slf", 0, 80.0, 42.0, 39.0, **paper))
    # the same method and datasets at the quick preset, on a test subset: never meets reported
    quick = paper | {"preset": "quick", "n_test": 1000, "backbone": "resnet18-small"}
    records.append(record("acl", "slf", 0, 60.0, 30.0, 28.0, **quick))
    return records


def as_v1(rec: Record) -> dict:
    """The record as an acbench.record/1 file held it: flags as "kind: message" strings, no
    protocol, attack settings or other fields that schema did not have (so: uniform records)."""
    assert rec.protocol == "uniform", "acbench.record/1 had only the uniform protocol"
    raw = rec.to_json()
    raw["schema"] = "acbench.record/1"
    raw["flags"] = [f"{f.kind}: {f.message}" for f in rec.flags]
    for key in (
        "protocol",
        "attacks",
        "recipe",
        "recipe_deviations",
        "finetune",
        "selected_epoch",
        "precision",
        "pretrain_options",
        "threads",
    ):
        del raw[key]
    return raw


def write_records(results: Path, records: list[Record], v1: bool = False) -> None:
    for rec in records:
        sub = results / "records" / rec.preset / rec.dataset
        sub.mkdir(parents=True, exist_ok=True)
        name = f"{rec.method}_{rec.finetune_dataset}_{rec.scheme}_s{rec.seed}.json"
        name = name if rec.protocol == "uniform" else name.replace(".json", f"_{rec.protocol}.json")
        old = v1 and rec.protocol == "uniform"  # /1 could not hold another protocol: those stay /2
        (sub / name).write_text(json.dumps(as_v1(rec) if old else rec.to_json(), indent=2))
    bad = results / "records" / "broken"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "bad_json.json").write_text('{"schema": "acbench.record/2", "method": ')
    string_metric = record("acl", "slf", 7, 80.0, 45.1, 40.0).to_json()
    string_metric["metrics"]["pgd20"] = "45.1"
    (bad / "string_metric.json").write_text(json.dumps(string_metric))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    write_records(root, make_records())
    return root


@pytest.fixture(scope="module")
def loaded(results):
    return load_records(results)


@pytest.fixture(scope="module")
def board(loaded):
    records, _ = loaded
    return build_leaderboard(records, reported=load_reported())


def table_of(board, preset, dataset, protocol="uniform"):
    (table,) = [
        t
        for t in board.tables
        if t.preset == preset and t.dataset == dataset and t.protocol == protocol
    ]
    return table


def check_snapshot(name: str, text: str) -> None:
    path = SNAPSHOTS / name
    if os.environ.get("ACBENCH_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing snapshot {path}; run with ACBENCH_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(encoding="utf-8"), f"{name} differs from its snapshot"


@pytest.mark.parametrize("fmt", ["md", "csv", "json"])
def test_snapshot(board, fmt):
    check_snapshot(f"leaderboard.{fmt}", render(board, fmt))


def test_malformed_files_skipped_with_named_warning(loaded):
    records, warnings = loaded
    assert len(records) == 3 * 3 * 3 + 1 + 4 + 1 + 1 + 1
    assert len(warnings) == 2
    bad_json, string_metric = sorted(warnings)
    assert "bad_json.json" in bad_json and "invalid JSON" in bad_json
    assert "string_metric.json" in string_metric and "'pgd20' is a string" in string_metric


def test_tables_and_presets_never_mixed(board):
    keys = [(t.preset, t.dataset, t.finetune_dataset, t.protocol, t.n_test) for t in board.tables]
    assert keys == [
        ("paper", "cifar10", "cifar10", "robustssl", 10000),
        ("paper", "cifar10", "cifar10", "uniform", 10000),
        ("paper", "cifar100", "stl10", "robustssl", 8000),
        ("quick", "cifar10", "cifar10", "uniform", 1000),
        ("quick", "digits", "digits", "uniform", 360),
    ]
    for table in board.tables:
        assert table.preset in table.title and f"n_test {table.n_test}" in table.title
        assert "8/255" in table.title
        assert ("protocol robustssl" in table.title) == (table.protocol == "robustssl")
        # reported numbers only ever meet the paper preset under the robustssl protocol (and
        # only methods with a published row: advcl-ip's transfer table has none)
        expected = (
            table.preset == "paper" and table.protocol == "robustssl" and table.dataset == "cifar10"
        )
        assert table.show_reported == expected
        assert all(not row.reported for row in table.rows) or expected
    only_paper = build_leaderboard(make_records(), reported=load_reported(), preset="paper")
    assert [t.preset for t in only_paper.tables] == ["paper"] * 3


def test_ranking_by_mean_autoattack(board):
    table = table_of(board, "quick", "digits")
    assert [row.method for row in table.rows] == ["rocl-ip", "acl", "advcl", "simclr"]
    assert [row.rank for row in table.rows] == [1, 2, 3, 4]
    assert table.rows[-1].mean_autoattack is None  # missing AA goes last
    means = [row.mean_autoattack for row in table.rows[:-1]]
    assert means == sorted(means, reverse=True)


def test_mean_std_over_seeds(board):
    table = table_of(board, "quick", "digits")
    rocl = table.rows[0]
    c, p, a = BASE["rocl-ip"]
    expected_clean = [c + SCHEME_SHIFT["alf"] + SEED_JITTER[s][0] for s in range(3)]
    cell = rocl.cells["alf"]["clean"]
    assert cell.n == 3
    assert cell.mean == pytest.approx(statistics.mean(expected_clean))
    assert cell.std == pytest.approx(statistics.stdev(expected_clean))  # sample std
    md = render(board, "md")
    mean, std = statistics.mean(expected_clean), statistics.stdev(expected_clean)
    assert f"{mean:.2f} ± {std:.2f} (3)" in md
    # mean AA = mean over schemes of the per-scheme seed means
    per_scheme = [
        statistics.mean(a + SCHEME_SHIFT[s] + SEED_JITTER[seed][2] for seed in range(3))
        for s in ("slf", "alf", "aff")
    ]
    assert rocl.mean_autoattack == pytest.approx(statistics.mean(per_scheme))
    # a null metric leaves its seed out of that cell only
    advcl = next(r for r in table.rows if r.method == "advcl")
    assert advcl.cells["alf"]["autoattack"].n == 2
    assert advcl.cells["alf"]["clean"].n == 3


def test_flags(board):
    table = table_of(board, "quick", "digits")
    flags = {row.method: row.flags for row in table.rows}
    assert "AA: Square stronger than APGD [slf s1]" in flags["rocl-ip"]
    assert "invariant: autoattack > pgd20 [aff s0]" in flags["advcl"]
    assert sum(f.startswith("invariant") for f in flags["advcl"]) == 1  # pipeline's merged
    assert sum(f.startswith("AA:") for f in flags["rocl-ip"]) == 1
    assert "no AutoAttack [alf s2]" in flags["advcl"]
    assert "deviation: epochs 10 (paper 1000)" in flags["acl"]  # on every run: no location
    assert {"no ALF", "no AFF", "seeds 1/3 [slf]", "no AutoAttack"} <= set(flags["simclr"])
    assert not any(f.startswith("n_test") for fs in flags.values() for f in fs)  # digits: none
    quick_cifar = table_of(board, "quick", "cifar10")
    assert "n_test 1000 < 10000" in quick_cifar.rows[0].flags
    paper = table_of(board, "paper", "cifar10", "robustssl")
    assert {"no ALF", "no AFF"} <= set(next(r for r in paper.rows if r.method == "advcl-ip").flags)


def test_protocol_deviations_legend_and_flags(board):
    """Deviations every robustssl record shares are said once, in the legend; a run's own
    deviation is in its row's flags."""
    paper = table_of(board, "paper", "cifar10", "robustssl")
    assert not any(f.startswith("protocol:") for row in paper.rows for f in row.flags)
    (note,) = [line for line in paper.legend() if line.startswith("protocol robustssl:")]
    assert all(d in note for d in ROBUSTSSL_DEVIATIONS)
    transfer = table_of(board, "paper", "cifar100", "robustssl")
    (row,) = transfer.rows
    assert [f for f in row.flags if f.startswith("protocol:")] == [
        "protocol: release left BN layers and shortcut convs at init…"
    ]
    uniform = table_of(board, "paper", "cifar10")
    assert not any(line.startswith("protocol") for line in uniform.legend())
    assert sum("protocol robustssl:" in line for line in render(board, "md").splitlines()) == 2


def test_reported_block_robustssl_paper_only(board):
    paper = table_of(board, "paper", "cifar10", "robustssl")
    acl = next(r for r in paper.rows if r.method == "acl")
    ref = acl.reported["slf"]
    assert (ref.name, ref.clean, ref.autoattack) == ("ACL", 78.22, 39.17)
    assert ref.delta_autoattack == pytest.approx(38.5 - 39.17)
    assert ref.delta_clean == pytest.approx(79.0 - 78.22)
    assert set(acl.reported) == {"slf", "alf", "aff"}
    assert not next(r for r in paper.rows if r.method == "advcl-ip").reported
    assert "| 39.17 (-0.67) " in render(board, "md")
    # a non-paper table never gets reported columns, even for a method with a mapping
    assert not table_of(board, "quick", "cifar10").show_reported
    # nor does a paper table of the uniform protocol: its finetuning is not RobustSSL's
    uniform = table_of(board, "paper", "cifar10")
    assert not uniform.show_reported and not uniform.rows[0].reported
    assert uniform.rows[0].method == "acl"
    md = render(build_leaderboard(make_records(), reported=load_reported(), preset="paper",
                                  dataset="cifar10->cifar10"), "md")  # fmt: skip
    robustssl_md, uniform_md = md.split("### ")[1:]
    assert "reported (Δ)" in robustssl_md and "reported" not in uniform_md


def test_csv_and_json_parse(board):
    lines = list(csv.DictReader(io.StringIO(render(board, "csv"))))
    assert len(lines) == sum(len(t.rows) for t in board.tables)
    with_slf = [line for line in lines if line["finetune_dataset"] != "stl10"]  # stl10: AFF only
    assert len(with_slf) == len(lines) - 1
    assert all(isinstance(float(line["slf_clean_mean"]), float) for line in with_slf)
    assert all("." in line["slf_clean_mean"] for line in with_slf)  # written as floats
    (transfer,) = [line for line in lines if line["finetune_dataset"] == "stl10"]
    assert transfer["aff_clean_mean"] == "50.0" and transfer["slf_clean_mean"] == ""
    (rocl,) = [x for x in lines if x["preset"] == "quick" and x["method"] == "rocl-ip"]
    assert rocl["rank"] == "1" and rocl["slf_autoattack_n"] == "3"
    assert rocl["slf_autoattack_std"] == "0.5204"
    simclr = next(x for x in lines if x["method"] == "simclr")
    assert simclr["slf_clean_std"] == "" and simclr["alf_clean_n"] == "0"  # one seed; not run
    assert "slf_reported_clean" in lines[0]
    # without a table that shows reported numbers, the CSV has no reported columns
    quick = render(
        build_leaderboard(make_records(), reported=load_reported(), preset="quick"), "csv"
    )
    header = next(csv.reader(io.StringIO(quick)))
    assert not any("reported" in c or "delta" in c for c in header) and "slf_clean_mean" in header
    data = json.loads(render(board, "json"))
    assert data["schema"] == "acbench.leaderboard/1"
    assert [t["preset"] for t in data["tables"]] == ["paper"] * 3 + ["quick", "quick"]


def test_html_self_contained():
    board = build_leaderboard(make_records(), reported=load_reported(), preset="paper")
    page = render(board, "html")
    assert page.count("<table>") == len(board.tables) == 3
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert images and base64.b64decode(images[0]).startswith(PNG_SIGNATURE)


def test_write_plots_valid_pngs(tmp_path):
    board = build_leaderboard(make_records(), dataset="digits")
    paths = write_plots(board, tmp_path / "plots")
    # per table: one scatter + one bar chart per scheme
    assert len(paths) == 1 + 3 and len(set(paths)) == len(paths)
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, path


def test_load_reported_not_from_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = load_reported()
    assert shipped_reported_path().is_file()
    assert len(shipped) > 100
    assert all(isinstance(r.autoattack, float) and isinstance(r.clean, float) for r in shipped)
    assert all(r.method and r.scheme in ("slf", "alf", "aff") for r in shipped)
    assert {r.source for r in shipped} == {"robustssl_leaderboard.csv"}
    # a results folder without reported/ falls back to the shipped copy
    assert load_reported(tmp_path) == shipped
    # a results folder with reported/*.csv is preferred
    (tmp_path / "reported").mkdir()
    with shipped_reported_path().open(newline="") as f:
        header, *rows = list(csv.reader(f))
    acl = next(row for row in rows if row[header.index("method")] == "ACL")
    with (tmp_path / "reported" / "mine.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, acl])
    mine = load_reported(tmp_path)
    assert len(mine) == 1 and [r.source for r in mine] == ["mine.csv"]
    assert mine[0] == dataclasses.replace(
        next(r for r in shipped if r.method == "ACL"), source="mine.csv"
    )


def test_load_reported_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("pretrain_dataset,finetune_dataset,scheme,method,clean\n")
    with pytest.raises(ConfigError, match="bad.csv: missing column.s. autoattack"):
        load_reported(bad)
    bad.write_text(
        "pretrain_dataset,finetune_dataset,scheme,method,clean,autoattack\n"
        "cifar10,cifar10,slf,ACL,78.2,n/a\n"
    )
    with pytest.raises(ConfigError, match="bad.csv, line 2: autoattack 'n/a' is not a number"):
        load_reported(bad)
    with pytest.raises(ConfigError, match="reported numbers not found"):
        load_reported(tmp_path / "missing.csv")
    # an empty number is "not published"
    bad.write_text(
        "pretrain_dataset,finetune_dataset,scheme,method,clean,autoattack\n"
        " CIFAR10 ,cifar10,SLF, ACL ,78.2,\n"
    )
    (ref,) = load_reported(bad)
    assert (ref.pretrain_dataset, ref.scheme, ref.method) == ("cifar10", "slf", "ACL")
    assert (ref.clean, ref.autoattack, ref.venue) == (78.2, None, "")


def test_filters():
    records = make_records()
    board = build_leaderboard(records, dataset="cifar10->cifar10", scheme="slf")
    assert [t.preset for t in board.tables] == ["paper", "paper", "quick"]
    assert all(t.schemes == ("slf",) for t in board.tables)
    assert not build_leaderboard(records, preset="smoke").tables
    assert "_No records._" in render(build_leaderboard([]), "md")
    with pytest.raises(UnknownName, match="unknown format 'markdown'"):
        render(build_leaderboard([]), "markdown")


def test_robustbench_entry():
    rec = make_records()[0].replace(
        autoattack_warnings=("it seems to be a randomized defense! Please use version='rand'.",)
    )
    entry = robustbench_entry(rec)
    for key in ("clean_acc", "autoattack_acc", "pgd20_acc", "eps"):
        assert isinstance(entry[key], float)
    assert entry["eps"] == EPS
    assert entry["threat_model"] == "Linf" and entry["dataset"] == "digits"
    assert entry["n_examples"] == 360 and entry["number_forward_passes"] == 1
    assert entry["unreliable"] is True and "AA: randomized defence" in entry["flags"]
    json.dumps(entry)


def test_duplicate_runs_keep_newest():
    old = record("acl", "slf", 0, 80.0, 40.0, 35.0, created="2026-01-01T00:00:00Z")
    new = record("acl", "slf", 0, 81.0, 41.0, 36.0, created="2026-02-01T00:00:00Z")
    for records in ([old, new], [new, old]):
        (row,) = build_leaderboard(records).tables[0].rows
        assert row.cells["slf"]["clean"].values == (81.0,)
        assert "duplicate runs, newest kept" in row.flags


# ---- schema /1, other attacks, protocols, escaping ---------------------------------------------


def test_v1_records_render_as_v2(tmp_path):
    """acbench.record/1 files (flags as strings, no settings) give the same leaderboard."""
    write_records(tmp_path / "v1", make_records(), v1=True)
    write_records(tmp_path / "v2", make_records())
    v1, warnings = load_records(tmp_path / "v1")
    assert len(v1) == len(make_records()) and len(warnings) == 2
    v2, _ = load_records(tmp_path / "v2")
    reported = load_reported()
    for fmt in ("md", "csv", "json"):
        text = render(build_leaderboard(v1, reported=reported), fmt)
        assert text == render(build_leaderboard(v2, reported=reported), fmt)
        check_snapshot(f"leaderboard.{fmt}", text)
    # a /1 flag string becomes a structured flag
    old = as_v1(record("acl", "slf", 0, 80.0, 40.0, 50.0))
    old["flags"] = ["invariant: autoattack 50.00 > pgd20 40.00", "something odd"]
    path = tmp_path / "v1" / "records" / "old.json"
    path.write_text(json.dumps(old))
    rec = next(r for r in load_records(tmp_path / "v1")[0] if r.metrics["autoattack"] == 50.0)
    assert rec.flags == (
        Flag("invariant", "autoattack 50.00 > pgd20 40.00"),
        Flag("note", "something odd"),
    )
    (row,) = build_leaderboard([rec]).tables[0].rows
    assert row.flags == ("invariant: autoattack > pgd20", "something odd")


CW = {"class": "CW", "c": 1.0, "kappa": 0, "steps": 50, "lr": 0.01, "threat_model": "L2"}
SETTINGS = {
    "clean": {},
    "pgd20": {"eps": EPS, "alpha": round(2 / 255, 7), "steps": 20, "random_start": True},
    "autoattack": {"version": "standard", "eps": EPS, "norm": "Linf", "seed": 0},
}


def with_cw(method, seed, cw, settings=CW, **over) -> Record:
    rec = record(method, "slf", seed, 80.0, 40.0, 35.0, **over)
    return rec.replace(metrics=rec.metrics | {"ta:CW": cw}, attacks=SETTINGS | {"ta:CW": settings})


def test_extra_attack_gets_its_own_column():
    records = [with_cw("acl", 0, 30.0), with_cw("acl", 1, 32.0), with_cw("rocl", 0, None)]
    (table,) = build_leaderboard(records).tables
    assert table.metrics == ("clean", "pgd20", "autoattack", "ta:CW")
    acl, rocl = table.rows
    assert acl.cells["slf"]["ta:CW"].values == (30.0, 32.0)
    assert "no CW" in rocl.flags and not any(f.startswith("no CW") for f in acl.flags)
    assert "attacks " + table.attacks_id in table.title and len(table.attacks_id) == 8
    assert any(
        line.startswith(f"attacks {table.attacks_id}: ") and "kappa=0" in line
        for line in table.legend()
    )
    md = render(build_leaderboard(records), "md")
    header = next(line for line in md.splitlines() if line.startswith("| #"))
    assert [c.strip() for c in header.strip("|").split("|")][2:6] == [
        "SLF clean",
        "SLF PGD-20",
        "SLF AutoAttack",
        "SLF CW",
    ]
    assert re.search(r"\| 31\.00 ± 1\.41 \(2\) +\|", md)
    lines = list(csv.DictReader(io.StringIO(render(build_leaderboard(records), "csv"))))
    assert [x["slf_ta:CW_mean"] for x in lines] == ["31.0", ""]
    assert {x["attacks"] for x in lines} == {table.attacks_id}
    data = json.loads(render(build_leaderboard(records), "json"))
    assert data["tables"][0]["attacks"]["ta:CW"] == CW
    assert data["tables"][0]["metrics"][-1] == "ta:CW"
    assert data["tables"][0]["rows"][0]["cells"]["slf"]["ta:CW"]["n"] == 2


def test_attack_settings_never_mixed():
    same = with_cw("rocl", 0, 28.0, settings=dict(reversed(CW.items())) | {"lr": 0.01 + 1e-12})
    other = with_cw("advcl", 0, 20.0, settings=CW | {"c": 0.1})
    board = build_leaderboard([with_cw("acl", 0, 30.0), same, other])
    assert len(board.tables) == 2  # key order and float noise do not split a table; c does
    by_method = {row.method: t for t in board.tables for row in t.rows}
    assert by_method["acl"] is by_method["rocl"] and by_method["advcl"] is not by_method["acl"]
    first, second = board.tables
    assert first.title != second.title and first.slug != second.slug
    assert {first.attacks["ta:CW"]["c"], second.attacks["ta:CW"]["c"]} == {1.0, 0.1}
    # records without settings (acbench.record/1) never share a table with records that have them
    plain = record("simclr", "slf", 0, 80.0, 40.0, 35.0)
    assert len(build_leaderboard([plain, with_cw("acl", 0, 30.0)]).tables) == 2
    assert "attacks" not in build_leaderboard([plain]).tables[0].title


def test_protocol_splits_tables_and_is_named():
    uniform = record("acl", "slf", 0, 80.0, 40.0, 35.0)
    robustssl = record("acl", "slf", 0, 81.0, 41.0, 36.0, protocol="robustssl")
    board = build_leaderboard([uniform, robustssl])
    assert [t.protocol for t in board.tables] == ["robustssl", "uniform"]
    assert "protocol robustssl" in board.tables[0].title
    assert "protocol" not in board.tables[1].title and board.tables[0].slug != board.tables[1].slug
    assert any(line.startswith("protocol robustssl:") for line in board.tables[0].legend())
    lines = list(csv.DictReader(io.StringIO(render(board, "csv"))))
    assert [x["protocol"] for x in lines] == ["robustssl", "uniform"]


def test_html_escapes_record_strings():
    evil = record("<script>alert(1)</script>", "slf", 0, 80.0, 40.0, 35.0, backbone="r&b")
    evil = evil.replace(flags=(Flag("note", '<img src=x onerror="x">'),))
    page = render(build_leaderboard([evil]), "html")
    assert "<script>" not in page and 'onerror="' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=&quot;x&quot;&gt;" in page
    assert "r&amp;b" in page and "r&b" not in page
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<p>No records.</p>" in render(build_leaderboard([]), "html")


def test_text_renderers_load_neither_pandas_nor_matplotlib():
    code = (
        "import sys; from benchmark.leaderboard import build_leaderboard; "
        "from benchmark.render import render; render(build_leaderboard([]), 'md'); "
        "print(sorted(m for m in ('pandas', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# the RobustSSL leaderboard's name of each acbench method that has published rows (WAVE2 sections
# 3-6): its AIR, AIR++ and RCS rows are the DynACL-based models
PUBLISHED_AS = {"acl": "ACL", "rocl": "RoCL", "advcl": "AdvCL", "dynacl": "DynACL", "dynacl++": "DynACL++",
                "dynacl-air": "AIR", "dynacl-air++": "AIR++", "dynacl-rcs": "RCS", "deacl": "DeACL"}


def test_every_published_row_meets_its_method():
    """Each published (pretrain -> finetune, scheme) row of a mapped method appears beside a paper
    robustssl record of that method, with its clean, AutoAttack and corruption numbers."""
    published = load_reported()
    names = {ref.method for ref in published}
    assert set(PUBLISHED_AS.values()) <= names  # a renamed CSV method would leave a row unmatched
    records, expected = [], {}
    for method, name in PUBLISHED_AS.items():
        rows = [ref for ref in published if ref.method == name]
        assert rows, name
        for ref in rows:
            over = {"dataset": ref.pretrain_dataset, "finetune_dataset": ref.finetune_dataset,
                    "preset": "paper", "protocol": "robustssl", "backbone": "resnet18",
                    "n_test": 8000 if ref.finetune_dataset == "stl10" else 10000}
            rec = record(method, ref.scheme, 0, 70.0, 40.0, 35.0, **over)
            records.append(rec.replace(metrics=rec.metrics | {"corruption": 60.0}))
            expected[(ref.pretrain_dataset, ref.finetune_dataset, ref.scheme, method)] = ref
    # the new names' published pairs (the CSV's): transfers included
    pairs = {(p, f) for p, f, _, m in expected if m in ("dynacl-air", "dynacl-rcs", "deacl")}
    assert {("cifar10", "cifar10"), ("cifar10", "stl10")} <= pairs
    board = build_leaderboard(records, reported=published)
    found = {}
    for table in board.tables:
        assert table.show_reported
        for row in table.rows:
            for scheme, got in row.reported.items():
                found[(table.dataset, table.finetune_dataset, scheme, row.method)] = got
    assert set(found) == set(expected)
    for key, ref in expected.items():
        got = found[key]
        assert (got.name, got.clean, got.autoattack, got.corruption) == (
            ref.method, ref.clean, ref.autoattack, ref.corruption), key
        assert got.delta_autoattack == pytest.approx(35.0 - ref.autoattack)
        if ref.corruption is None:
            assert got.delta_corruption is None
        else:
            assert got.delta_corruption == pytest.approx(60.0 - ref.corruption)
    with_ca = [k for k, ref in expected.items() if ref.corruption is not None]
    assert {k[3] for k in with_ca} >= {"dynacl-air", "dynacl-air++", "dynacl-rcs", "dynacl", "dynacl++", "deacl"}
    # names RobustSSL never published stay unmatched, and so do the old aliases
    stray = [record(m, "slf", 0, 70.0, 40.0, 35.0, dataset="cifar10", finetune_dataset="cifar10",
                    preset="paper", protocol="robustssl", n_test=10000) for m in ("acl-air", "air", "rcs")]
    table = build_leaderboard(stray, reported=published).tables[0]
    assert not any(row.reported for row in table.rows)
