"""One pretraining run on several processes under torchrun: the stage runner of
:mod:`benchmark.stage` for a collective stage (the building blocks are in :mod:`benchmark.ddp`).

Every rank computes the same key; rank 0 decides whether the stage must run, takes the stage lock,
writes the stage folder and ``done.json``; all ranks train; nothing else is written by the other
ranks. Upstream stages that are themselves collective (the SimCLR pretraining behind AdvCL's
pseudo-labels) run the same way on every rank; the others (k-means) run on rank 0 alone, and every
rank then reads their outputs from the run store.
"""

from __future__ import annotations

import dataclasses

from benchmark.ddp import barrier, broadcast_object, device, is_main, local_only, on_main
from benchmark.pipeline import METHOD_STAGES, Target, target_session
from benchmark.stage import (
    RunOptions,
    Session,
    Stage,
    StageRun,
    begin_config,
    below,
    execute,
    key_of,
    kinds,
    run_once,
    settle,
)


def run_collective(stage: Stage, opts: RunOptions, session: Session) -> str:
    """:func:`benchmark.stage.run_once` for every rank of a torchrun job; returns the key."""
    inner = below(stage, session)
    upstream: dict[str, str] = {}
    for role, up in stage.upstream().items():
        if up.collective:
            upstream[role] = run_collective(up, opts, inner)
        else:
            def local(up: Stage = up) -> str:
                with local_only():
                    return run_once(up, opts, inner)

            upstream[role] = on_main(local)
    key = key_of(stage, opts, upstream)
    store = opts.store
    force = settle(stage, session, key)
    if on_main(lambda: store.is_done(stage.kind, key) and not force):
        return key
    stage.prepare(opts, upstream)
    run = StageRun(store.dir(stage.kind, key), key, upstream, opts, kinds(stage))
    if is_main():
        with store.running(stage.kind, key):
            skip = store.is_done(stage.kind, key) and not force  # another job finished it meanwhile
            if not skip:
                store.begin(stage.kind, key, begin_config(stage, opts, upstream), force=force)
            broadcast_object(skip)
            if not skip:
                store.finish(stage.kind, key, execute(stage, run))
    elif not broadcast_object(None):
        execute(stage, run)  # writes nothing on ranks > 0
    barrier()  # done.json is written before any rank returns
    return key


def pretrain(opts: RunOptions, target: Target) -> str:
    """The pretrain stage of ``target`` on every rank of a torchrun job."""
    opts = dataclasses.replace(opts, device=str(device()))  # this rank's GPU, not "auto"
    session = target_session(target, Session(force=METHOD_STAGES if opts.force else frozenset()))
    stage = target.pretrain(opts)
    if stage.collective:
        return run_collective(stage, opts, session)
    # a ++ method: the base pretraining on every rank, then its post-processing on the main rank
    for up in stage.upstream().values():
        if up.collective:
            run_collective(up, opts, session)

    def post() -> str:
        with local_only():
            return run_once(stage, opts, session)

    return on_main(post)
