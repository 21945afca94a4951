"""The suite's job order: longest first within each layer, and ``run`` still returns its records in
the order of its schemes."""

from benchmark.suite import Suite, layers


def test_layers_put_long_jobs_first_and_keep_every_job():
    suite = Suite(preset="smoke", methods=("acl", "advcl", "simclr"), datasets=("digits",), seeds=(0, 1))
    pretrain, schemes = layers(suite)
    assert [j.method for j in pretrain[:2]] == ["advcl", "advcl"]  # needs SimCLR + pseudo-labels
    assert {(j.method, j.seed) for j in pretrain} == {(m, s) for m in ("acl", "advcl", "simclr") for s in (0, 1)}
    order = [j.scheme for j in schemes]
    assert order == ["aff"] * 6 + ["alf"] * 6 + ["slf"] * 6  # AFF trains the encoder: the longest
    assert len({j.name for j in schemes}) == 18
    assert [j.method for j in schemes[:6]] == ["acl", "acl", "advcl", "advcl", "simclr", "simclr"]  # stable


class _Clock:
    """A thread pool's jobs that log when they start and end; pretrain jobs of ``slow`` methods
    take longer, those of ``broken`` methods fail."""

    def __init__(self, slow=(), broken=()):
        import threading

        self.events, self.lock, self.slow, self.broken = [], threading.Lock(), slow, broken

    def __call__(self, job):
        import time

        with self.lock:
            self.events.append(("start", job.name))
        time.sleep(0.3 if job.kind == "pretrain" and job.method in self.slow else 0.02)
        with self.lock:
            self.events.append(("end", job.name))
        return {"ok": not (job.kind == "pretrain" and job.method in self.broken), "job": job.name, "seconds": 0.0}


def _stream(suite, workers, clock):
    import concurrent.futures as cf

    from benchmark.executors import stream

    reports = []
    with cf.ThreadPoolExecutor(max_workers=workers) as pool:
        stream(lambda job: pool.submit(clock, job), workers, layers(suite), reports.append)
    return reports


def test_pool_schedule_starts_a_scheme_as_soon_as_its_own_pretraining_is_done():
    suite = Suite(preset="smoke", methods=("acl", "simclr"), datasets=("digits",), seeds=(0,))
    clock = _Clock(slow=("acl",))
    reports = _stream(suite, 2, clock)
    assert sorted(r["job"] for r in reports) == sorted(j.name for layer in layers(suite) for j in layer)
    starts = [name for kind, name in clock.events if kind == "start"]
    ends = [name for kind, name in clock.events if kind == "end"]
    # simclr's schemes run while acl's (slow) pretraining still runs: no barrier between the layers
    first_simclr_scheme = starts.index("scheme simclr digits s0/aff")
    assert first_simclr_scheme < starts.index("scheme acl digits s0/aff")
    assert clock.events.index(("start", "scheme simclr digits s0/aff")) < clock.events.index(
        ("end", "pretrain acl digits s0"))
    # a scheme never starts before its pretraining ended
    for sc in ("aff", "alf", "slf"):
        for m in ("acl", "simclr"):
            assert clock.events.index(("end", f"pretrain {m} digits s0")) < clock.events.index(
                ("start", f"scheme {m} digits s0/{sc}"))
    assert len(ends) == 8


def test_pool_schedule_skips_the_schemes_of_a_failed_pretraining_and_keeps_at_most_n_in_flight():
    suite = Suite(preset="smoke", methods=("acl", "rocl", "simclr"), datasets=("digits",), seeds=(0,))
    clock = _Clock(broken=("rocl",))
    reports = _stream(suite, 2, clock)
    skipped = [r["job"] for r in reports if r.get("error") == "skipped: its pretraining failed"]
    assert sorted(skipped) == [f"scheme rocl digits s0/{sc}" for sc in ("aff", "alf", "slf")]
    assert not any(name.startswith("scheme rocl") for kind, name in clock.events)
    assert len(reports) == 3 + 9
    in_flight = peak = 0
    for kind, _ in clock.events:
        in_flight += 1 if kind == "start" else -1
        peak = max(peak, in_flight)
    assert peak == 2


def test_suite_on_cpu_defaults_to_a_pool_of_cores_plus_one_unless_told(monkeypatch, tmp_path):
    """`--executor pool` without `--jobs` gets the same worker count as no `--executor` at all."""
    import os

    from click.testing import CliRunner

    import benchmark.cli as cli

    seen = []

    def fake_run_suite(opts, spec, progress=True, echo=print):
        seen.append((spec.executor, spec.jobs))
        return {"seconds": 0.0, "jobs": 0, "failed": 0, "failures": []}

    monkeypatch.setattr(cli, "run_suite", fake_run_suite)
    base = ["suite", "--preset", "smoke", "--methods", "simclr", "--device", "cpu", "--results", str(tmp_path)]
    cores = (os.cpu_count() or 1) + 1
    for extra, expected in (([], ("pool", cores)), (["--executor", "pool"], ("pool", cores)),
                            (["--executor", "pool", "--jobs", "2"], ("pool", 2)),
                            (["--executor", "local"], ("local", 1))):
        r = CliRunner().invoke(cli.main, base + extra)
        assert r.exit_code == 0, r.output
        assert seen[-1] == expected, extra
