"""One pretraining run on several processes under torchrun (the building blocks are in
:mod:`benchmark.ddp`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from benchmark.ddp import barrier, broadcast_object, device, is_main, local_only, on_main

UPSTREAM_PRETRAINS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "pseudo_labels": (("simclr", {}),),
}


# ---- the pretrain stage on several processes ----------------------------------------------------


def pretrain_stage(opts: Any, method: str, params: dict[str, Any], preset: Any, dataset: str, seed: int) -> str:
    """:func:`benchmark.pipeline.pretrain_stage` for every rank of a torchrun job; returns the key.

    Every rank computes the same key; rank 0 decides whether the stage must run, takes the stage
    lock, writes the stage folder and ``done.json``; all ranks train; nothing else is written by
    the other ranks. Upstream stages (AdvCL's pseudo-labels) run their pretraining on every rank,
    the rest (k-means) on rank 0 alone; their outputs are broadcast.
    """
    from benchmark import pipeline
    from benchmark.pretrain import run_pretrain
    from benchmark.store import stage_key
    from methods import get_method

    m = get_method(method, dataset=dataset, **params)
    upstream: dict[str, str] = {}
    extras: dict[str, Any] = {}
    for need in m.requires:
        for up_method, up_params in UPSTREAM_PRETRAINS.get(need, ()):
            pretrain_stage(dataclasses.replace(opts, force=False), up_method, up_params, preset, dataset, seed)

        def upstream_stage(need: str = need) -> tuple[str, dict[str, Any]]:
            with local_only():
                return pipeline.UPSTREAM[need](opts, preset, dataset, seed)

        key, ex = on_main(upstream_stage)
        upstream[need] = key
        extras.update(ex)
    cfg = dataclasses.replace(
        pipeline.pretrain_config(opts, method, params, preset, dataset, seed), extras_keys=upstream
    )
    key = stage_key("pretrain", cfg.to_dict(), upstream)
    store = opts.store
    if on_main(lambda: store.is_done("pretrain", key) and not opts.force):
        return key
    data = pipeline.dataset_for(opts, preset, dataset)
    dev = device()
    if is_main():
        with store.running("pretrain", key):
            skip = store.is_done("pretrain", key) and not opts.force  # another job finished it meanwhile
            d = None if skip else store.begin(
                "pretrain", key, {"config": cfg.to_dict(), "upstream": upstream}, force=opts.force
            )
            broadcast_object(skip)
            if not skip:
                info = run_pretrain(cfg, data, d, dev, extras=extras, progress=opts.progress)
                store.finish("pretrain", key, info)
    elif not broadcast_object(None):
        run_pretrain(cfg, data, store.dir("pretrain", key), dev, extras=extras, progress=False)
    barrier()  # done.json is written before any rank returns
    return key
