"""Tests of the engine benchmark's measuring parts (sweep/bench_engine.py): its figures are
printed, never asserted, so what is tested is that they count what they say."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Callable

from sweep.bench_engine import DRIVER, CpuSampler, phases

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.5:\n    pass\n"
WAIT = "print('burnt', flush=True)\nimport sys\nsys.stdin.read()\n"
# a child that burns 0.5 s of CPU and then takes the title of a Ray trial actor, as a Ray worker
# does once it hosts one (exec keeps its pid and its CPU count)
CHILD = BURN + f"import os, sys\nos.execv(sys.executable, ['ray::ImplicitFunc.train', '-c', {WAIT!r}])\n"
# a parent that burns 0.5 s of CPU alone, says so and waits for a line; then starts the child and
# waits for another line; then ends the child, says so, and waits for its stdin to close. Each
# step waits, so the sampler reads the processes of that step while they are there.
PARENT = BURN + textwrap.dedent("""
    import subprocess, sys
    print("alone", flush=True)
    sys.stdin.readline()
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    print("ready", flush=True)
    sys.stdin.readline()
    child.stdin.close()
    child.wait()
    print("alone again", flush=True)
    sys.stdin.read()
""").replace("CHILD", repr(CHILD))


def sampled_parent() -> tuple[subprocess.Popen, CpuSampler, Callable[[str], None]]:
    """PARENT, its sampler, and a step: wait for the parent's line, read, let it go on."""
    proc = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sampler = CpuSampler(proc.pid, every=0.05)
    sampler.start()

    def step(expected: str) -> None:
        assert proc.stdout.readline().strip() == expected
        sampler.read()  # a read at this point for sure, besides the sampler's own
        proc.stdin.write("next\n")
        proc.stdin.flush()

    return proc, sampler, step


def test_the_cpu_sampler_counts_the_process_and_the_processes_it_starts_by_their_latest_title() -> None:
    proc, sampler, step = sampled_parent()
    for line in ("alone", "ready", "alone again"):
        step(line)
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    cpu = sampler.stop()
    assert cpu[DRIVER] >= 0.45 and cpu["trial actors"] >= 0.45, cpu  # /proc counts in clock ticks
    assert abs(cpu["all"] - sum(v for k, v in cpu.items() if k != "all")) < 1e-9, cpu


def test_the_least_wall_is_the_time_alone_then_the_rest_of_the_cpu_over_the_cores() -> None:
    proc, sampler, step = sampled_parent()
    step("alone")
    alone_s, alone_cpu = sampler.alone
    step("ready")
    assert sampler.alone[1] - alone_cpu < 0.2  # at most the parent's start of its child since
    before = sampler.alone
    step("alone again")
    assert sampler.alone == before  # without a child again later: that time is not the driver's alone
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    cpu = sampler.stop()
    assert alone_cpu >= 0.45 and alone_s >= alone_cpu - 0.02, (alone_s, alone_cpu)  # /proc counts 10-ms ticks
    rest = cpu["all"] - sampler.alone[1]
    assert rest >= 0.45, cpu  # the child's burn came after
    for cores in (1, 2, 4):
        assert abs(sampler.least_wall(cores) - (sampler.alone[0] + rest / cores)) < 1e-9


def test_phases_are_read_off_the_stamped_lines_of_a_ray_run() -> None:
    lines = [(3.0, "Ray: local, GCS at 127.0.0.1:1"), (4.0, "[   1.0s] started seed_0/warmup"),
             (9.0, "[   6.0s] ended   seed_0/warmup"), (9.5, "segment 1: 1 of 2 trials ended so far"),
             (12.0, "[   9.0s] started seed_0/full"), (14.0, "[  11.0s] ended   seed_0/full"),
             (14.1, "trial  status  G_tau"), (14.2, "done in 14.2s (1 finished)")]
    got = phases(lines, 15.0, sequential=False)
    assert got == {"imports, data, Ray start": 3.0, "plan and publish to the first trial": 1.0, "the trials": 10.0,
                   "last trial's end to the end of the table": got["last trial's end to the end of the table"],
                   "teardown to exit": got["teardown to exit"], "segment boundary 1": 3.0}
    assert abs(got["last trial's end to the end of the table"] - 0.2) < 1e-9 and abs(got["teardown to exit"] - 0.8) < 1e-9
