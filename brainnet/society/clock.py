"""The clock: a simpy environment decides who fires when. The only simpy user in brainnet.

Each firing (a cluster in a round) waits for the firings whose messages it reads, plus the
time those messages take on the wire (latency + bytes / bandwidth), then computes for
``compute_time``. Firings that start at the same simulated instant form a *wave*, and a wave
is computed as ONE batched call per bank. The clock never touches tensors: it plans the step;
the society executes the plan.

Plans depend only on the topology, the number of rounds and static buffer sizes, so a plan is
computed once and reused until arousal changes the number of rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from brainnet.society.topology import Firing


@dataclass(frozen=True)
class Plan:
    waves: list[tuple[float, list[Firing]]]  # (start time, firings), in time order
    makespan: float  # simulated time of one step


def plan_step(firings: list[Firing], compute_time: float, link_time: float) -> Plan:
    """Simulate one step's firings and group those that start together into waves."""
    env = simpy.Environment()
    done = {(f.cluster, f.round): env.event() for f in firings}
    start: dict[tuple[int, int], float] = {}

    def fire(f: Firing):
        if f.after:
            yield simpy.AllOf(env, [done[a] for a in f.after])
            yield env.timeout(link_time)  # the messages travel
        start[(f.cluster, f.round)] = env.now
        yield env.timeout(compute_time)
        done[(f.cluster, f.round)].succeed()

    for f in firings:
        env.process(fire(f))
    env.run()
    by_time: dict[float, list[Firing]] = {}
    for f in firings:
        by_time.setdefault(round(start[(f.cluster, f.round)], 9), []).append(f)
    waves = sorted(by_time.items())
    return Plan(waves=waves, makespan=env.now)
