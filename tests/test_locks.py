"""The vectors lock (fiftyone_plugin.locks) under contention, on the real mongod: processes that
start together and take it over and over, some as embed runs (shared), some as identity audits
(exclusive). An exclusive holding never overlaps any other holding; shared ones do overlap each
other; each refusal is one Busy that names a live holder. The slow variant runs more processes
for longer beside a CPU burner (pytest -m slow)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

WORKER = textwrap.dedent("""
    import json, random, sys, time
    from fiftyone_plugin import locks
    key, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    rng, held, refused = random.Random(seed), [], []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        kind = "exclusive" if rng.random() < 0.3 else "shared"
        take = locks.exclusive if kind == "exclusive" else locks.shared
        try:
            with take(key, "dataset 'stress'", f"a {kind} run"):
                t_in = time.monotonic()
                time.sleep(rng.uniform(0.005, 0.03))
                held.append((kind, t_in, time.monotonic()))
        except locks.Busy as e:
            refused.append(str(e))
        time.sleep(rng.uniform(0, 0.01))
    print(json.dumps({"held": held, "refused": refused}))
""")


def _contend(processes: int, seconds: float, burn: bool = False, worker: str = WORKER) -> tuple[list, list]:
    """Start ``processes`` workers on one fresh key at once; returns every holding and refusal."""
    key = f"vectors:stress-{uuid.uuid4().hex[:8]}"
    burners = [multiprocessing.Process(target=_burn, args=(seconds + 30,)) for _ in range(2 if burn else 0)]
    for b in burners:
        b.start()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", worker, key, str(seconds), str(seed)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
                 for seed in range(processes)]
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for b in burners:
            b.terminate()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    import fiftyone.core.odm as foo_db

    from fiftyone_plugin import locks
    assert foo_db.get_db_conn()[locks.LOCKS].find_one({"_id": key}) is None  # every holder let go
    return [tuple(h) for r in results for h in r["held"]], [e for r in results for e in r["refused"]]


def _burn(seconds: float) -> None:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        sum(i * i for i in range(10_000))


def _check(held: list, refused: list) -> None:
    exclusive = [h for h in held if h[0] == "exclusive"]
    shared = sorted((h for h in held if h[0] == "shared"), key=lambda h: h[1])
    assert exclusive and shared and refused, (len(exclusive), len(shared), len(refused))
    for kind, t_in, t_out in exclusive:
        overlapping = [h for h in held if h[1] < t_out and t_in < h[2] and h != (kind, t_in, t_out)]
        assert not overlapping, ((kind, t_in, t_out), overlapping[:3])
    assert any(b[1] < a[2] for a, b in zip(shared, shared[1:])), "no two shared holders were ever in together"
    for text in refused:
        assert text.startswith("dataset 'stress': a ") and " is running (process " in text, text
        assert len(text.splitlines()) == 1


def test_an_exclusive_holder_is_alone_and_shared_ones_overlap():
    _check(*_contend(processes=3, seconds=3))


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(5))
def test_the_same_with_more_processes_beside_a_cpu_burner(trial):
    _check(*_contend(processes=12, seconds=15, burn=True))


KINDS_WORKER = textwrap.dedent("""
    import json, random, sys, time
    from fiftyone_plugin import locks
    key, seconds, seed = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    rng, held, refused = random.Random(seed), [], []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        kind, alone = rng.choice("AB"), rng.random() < 0.2
        try:
            with locks.shared(key, "dataset 'stress'", f"a run of kind {kind}", kind=kind,
                              alone="it drops everything first" if alone else None) as holding:
                t_in = time.monotonic()
                time.sleep(rng.uniform(0.005, 0.03))
                t_share = time.monotonic()
                if alone:
                    holding.share()
                time.sleep(rng.uniform(0.005, 0.03))
                held.append((kind, alone, t_in, t_share, time.monotonic()))
        except locks.Busy as e:
            refused.append(str(e))
        time.sleep(rng.uniform(0, 0.01))
    print(json.dumps({"held": held, "refused": refused}))
""")


def _check_kinds(held: list, refused: list) -> None:
    """Holders of other kinds never overlap; one that started alone overlaps nobody until it shared."""
    def overlap(a, b, end_of_a=4):
        return a[2] < b[4] and b[2] < a[end_of_a] and a != b
    for a in held:
        for b in held:
            assert not (a[0] != b[0] and overlap(a, b)), (a, b)
            assert not (a[1] and overlap(a, b, end_of_a=3)), (a, b)
    same = [(a, b) for a in held for b in held if a[0] == b[0] and overlap(a, b)]
    assert same and any(a[1] for a in held) and refused, (len(same), len(refused))
    for text in refused:
        assert text.startswith("dataset 'stress': a run of kind ") and " is running (process " in text, text
        assert len(text.splitlines()) == 1, text
        assert " with other settings (" in text or "alone (" in text, text


def test_shared_holders_of_other_kinds_or_alone_ones_never_overlap():
    """Two embed runs of other settings (plain and --detect) got in together and mixed vectors;
    an --overwrite dropped the vectors of a run beside it. Real processes that start together,
    taking kinds A and B, some alone first, over and over."""
    _check_kinds(*_contend(processes=3, seconds=4, worker=KINDS_WORKER))


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3))
def test_kinds_with_more_processes_beside_a_cpu_burner(trial):
    _check_kinds(*_contend(processes=10, seconds=12, burn=True, worker=KINDS_WORKER))
