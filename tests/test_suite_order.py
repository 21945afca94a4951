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
