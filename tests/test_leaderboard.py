"""Leaderboard: fixed records -> tables, compared to snapshots in tests/snapshots/.

Regenerate the snapshots after an intended change with
``ACBENCH_UPDATE_SNAPSHOTS=1 python -m pytest tests/test_leaderboard.py`` and review the diff.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import statistics
from pathlib import Path

import pandas as pd
import pytest

from benchmark.leaderboard import (
    build_leaderboard,
    load_records,
    load_reported,
    render,
    robustbench_entry,
    shipped_reported_path,
    write_plots,
)

SNAPSHOTS = Path(__file__).parent / "snapshots"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPS = round(8 / 255, 7)  # as the pipeline writes it

# quick preset, digits -> digits: (clean, pgd20, autoattack) per method at SLF; schemes shift all
# three, seeds add a small fixed jitter.
BASE = {"rocl-ip": (78.0, 46.0, 42.0), "acl": (80.0, 42.0, 38.0), "advcl": (83.0, 39.0, 33.0)}
SCHEME_SHIFT = {"slf": 0.0, "alf": -2.5, "aff": 3.0}
SEED_JITTER = {0: (0.0, 0.0, 0.0), 1: (1.25, 0.5, 0.75), 2: (-0.5, -1.0, -0.25)}


def record(method, scheme, seed, clean, pgd20, aa, **over) -> dict:
    rec = {
        "schema": "acbench.record/1",
        "method": method,
        "method_params": {},
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
        "flags": [],
        "stages": {"pretrain": f"pre-{method}-{seed}", "finetune": f"ft-{method}-{scheme}-{seed}"},
        "checkpoint": f"runs/finetune/ft-{method}-{scheme}-{seed}/classifier.pt",
        "cost": {"pretrain_s": 1.0, "finetune_s": 1.0, "eval_s": 1.0, "device": "cpu"},
        "versions": {"acbench": "0.1.0"},
        "created": "2026-11-28T19:40:00Z",
    }
    rec.update(over)
    return rec


def make_records() -> list[dict]:
    """3 methods x 3 schemes x 3 seeds (quick, digits) plus the special cases."""
    records = []
    for method, (c, p, a) in BASE.items():
        for scheme, shift in SCHEME_SHIFT.items():
            for seed, (dc, dp, da) in SEED_JITTER.items():
                rec = record(method, scheme, seed, c + shift + dc, p + shift + dp, a + shift + da)
                if method == "acl":
                    rec["flags"] = ["recipe-deviation: epochs 10 (paper 1000)"]
                if (method, scheme, seed) == ("advcl", "alf", 2):
                    rec["metrics"]["autoattack"] = None  # not run
                if (method, scheme, seed) == ("rocl-ip", "slf", 1):
                    warning = (
                        "autoattack: Square Attack has decreased the robust accuracy of 0.28%. "
                        "This might indicate that the robustness evaluation using AutoAttack is "
                        "unreliable."
                    )  # the pipeline keeps it in both places
                    rec["autoattack_warnings"] = [warning]
                    rec["flags"] = [f"autoattack-warning: {warning}"]
                if (method, scheme, seed) == ("advcl", "aff", 0):
                    rec["metrics"]["autoattack"] = rec["metrics"]["pgd20"] + 5.0  # broken invariant
                    rec["flags"] = ["invariant: autoattack 47.00 > pgd20 42.00"]  # pipeline's form
                records.append(rec)
    # a method with one seed, one scheme and no AutoAttack: ranks last, flagged
    records.append(record("simclr", "slf", 0, 90.0, 1.0, None))
    # the paper protocol: acl meets the RobustSSL numbers, advcl-ip has no reported mapping
    paper = {"dataset": "cifar10", "finetune_dataset": "cifar10", "preset": "paper"}
    paper |= {"n_test": 10000, "backbone": "resnet18"}
    records.append(record("acl", "slf", 0, 79.0, 41.5, 38.5, **paper))
    records.append(record("acl", "alf", 0, 76.0, 43.0, 40.0, **paper))
    records.append(record("acl", "aff", 0, 81.0, 52.0, 49.0, **paper))
    records.append(record("advcl-ip", "slf", 0, 82.0, 44.0, 41.0, **paper))
    # the same method and datasets at the quick preset, on a test subset: never meets reported
    quick = paper | {"preset": "quick", "n_test": 1000, "backbone": "resnet18-small"}
    records.append(record("acl", "slf", 0, 60.0, 30.0, 28.0, **quick))
    return records


def write_records(results: Path, records: list[dict]) -> None:
    for rec in records:
        sub = results / "records" / rec["preset"] / rec["dataset"]
        sub.mkdir(parents=True, exist_ok=True)
        name = f"{rec['method']}_{rec['finetune_dataset']}_{rec['scheme']}_s{rec['seed']}.json"
        (sub / name).write_text(json.dumps(rec, indent=2))
    bad = results / "records" / "broken"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "bad_json.json").write_text('{"schema": "acbench.record/1", "method": ')
    string_metric = record("acl", "slf", 7, 80.0, "45.1", 40.0)
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


def table_of(board, preset, dataset):
    (table,) = [t for t in board.tables if t.preset == preset and t.dataset == dataset]
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
    assert len(records) == 3 * 3 * 3 + 1 + 4 + 1
    assert len(warnings) == 2
    bad_json, string_metric = sorted(warnings)
    assert "bad_json.json" in bad_json and "invalid JSON" in bad_json
    assert "string_metric.json" in string_metric and "'pgd20' is a string" in string_metric


def test_tables_and_presets_never_mixed(board):
    keys = [(t.preset, t.dataset, t.finetune_dataset, t.n_test) for t in board.tables]
    assert keys == [
        ("paper", "cifar10", "cifar10", 10000),
        ("quick", "cifar10", "cifar10", 1000),
        ("quick", "digits", "digits", 360),
    ]
    for table in board.tables:
        assert table.preset in table.title and f"n_test {table.n_test}" in table.title
        assert "8/255" in table.title
        # reported numbers only ever meet the paper preset
        assert table.show_reported == (table.preset == "paper")
        assert all(not row.reported for row in table.rows) or table.preset == "paper"
    only_paper = build_leaderboard(make_records(), reported=load_reported(), preset="paper")
    assert [t.preset for t in only_paper.tables] == ["paper"]


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
    paper = table_of(board, "paper", "cifar10")
    assert {"no ALF", "no AFF"} <= set(next(r for r in paper.rows if r.method == "advcl-ip").flags)


def test_reported_block_paper_only(board):
    paper = table_of(board, "paper", "cifar10")
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


def test_csv_and_json_parse(board):
    frame = pd.read_csv(io.StringIO(render(board, "csv")))
    assert len(frame) == sum(len(t.rows) for t in board.tables)
    assert frame["slf_clean_mean"].dtype.kind == "f"
    rocl = frame[(frame.preset == "quick") & (frame.method == "rocl-ip")].iloc[0]
    assert rocl["rank"] == 1 and rocl["slf_autoattack_n"] == 3
    data = json.loads(render(board, "json"))
    assert data["schema"] == "acbench.leaderboard/1"
    assert [t["preset"] for t in data["tables"]] == ["paper", "quick", "quick"]


def test_html_self_contained():
    board = build_leaderboard(make_records(), reported=load_reported(), preset="paper")
    page = render(board, "html")
    assert page.count("<table>") == len(board.tables) == 1
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
    assert {"method", "clean", "autoattack", "scheme"} <= set(shipped.columns)
    assert shipped["autoattack"].dtype.kind == "f"
    # a results folder without reported/ falls back to the shipped copy
    assert len(load_reported(tmp_path)) == len(shipped)
    # a results folder with reported/*.csv is preferred
    (tmp_path / "reported").mkdir()
    one = shipped[shipped.method == "ACL"].head(1).drop(columns=["source"])
    one.to_csv(tmp_path / "reported" / "mine.csv", index=False)
    mine = load_reported(tmp_path)
    assert len(mine) == 1 and mine["source"].tolist() == ["mine.csv"]


def test_filters():
    records = make_records()
    board = build_leaderboard(records, dataset="cifar10->cifar10", scheme="slf")
    assert [t.preset for t in board.tables] == ["paper", "quick"]
    assert all(t.schemes == ("slf",) for t in board.tables)
    assert not build_leaderboard(records, preset="smoke").tables
    assert "_No records._" in render(build_leaderboard([]), "md")


def test_robustbench_entry():
    rec = make_records()[0]
    rec["autoattack_warnings"] = ["it seems to be a randomized defense! Please use version='rand'."]
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
