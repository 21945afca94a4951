"""Where an ACL step's time goes on the GPU (how results/perf/h200.md's notes were measured).

python3 results/perf/h200_profile.py [method] [precision]: img/s of the harness step with cuDNN's
autotuner off and on, then a torch.profiler table of three steps (top kernels by GPU time) and the
share of the step's wall time the GPU was busy.
"""

import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmark.perf import PerfBench

method = sys.argv[1] if len(sys.argv) > 1 else "acl"
precision = sys.argv[2] if len(sys.argv) > 2 else "bf16"


def rate(bench: PerfBench, steps: int = 8) -> float:
    for _ in range(3):
        bench.harness_step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        bench.harness_step()
    torch.cuda.synchronize()
    return steps * bench.batch_size / (time.perf_counter() - t)


for flag in (False, True):
    torch.backends.cudnn.benchmark = flag
    bench = PerfBench(method, preset="paper", device="cuda", precision=precision)
    print(f"{method} {precision} cudnn.benchmark={flag}: {rate(bench):.0f} img/s", flush=True)

with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(3):
        bench.harness_step()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
events = prof.key_averages()
# the kernels alone (an op's own row repeats its kernels' time, and annotations span them)
gpu = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
print(f"3 steps: wall {wall:.3f} s, GPU kernels {gpu:.3f} s ({100 * gpu / wall:.0f} % busy)")
print(events.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=60))
by_shape = prof.key_averages(group_by_input_shape=True)
print(by_shape.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=40,
                     max_shapes_column_width=70))
