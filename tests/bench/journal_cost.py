"""Benchmark: what the journal costs a run (not a test).

Runs the per-VPS journal protocol of a reinstall run for ``--vps`` VPSes with
``--concurrency`` workers, once with the journal and once without, and prints the difference
per VPS and the number of commits. Each VPS does what the scheduler does around a reinstall:

    write_intents ─► "POST" ─► record_attempt ─► record_outcome(accepted, durable)
                           ─► "readiness" ─► record_outcome(ready)

The POST and the readiness check are ``anyio.sleep(--post-ms)``; with the default 0 ms the
difference is the journal's pure overhead (wall and CPU, including the worker thread). The
SQLite journal lives on a temporary file of the current directory's file system (``--dir`` to
move it), with WAL and ``synchronous=FULL`` as in production. ``--backend postgresql`` uses
the PostgreSQL journal instead: ``--url`` names a database, else a throwaway local server is
started (``tests/pg_support.py``, over a Unix socket) with ``fsync`` and
``synchronous_commit`` on, so every commit waits for the disk as in production.

    .venv/bin/python tests/bench/journal_cost.py [--vps 2000] [--concurrency 100] [--post-ms 0]
    .venv/bin/python tests/bench/journal_cost.py --backend postgresql --post-ms 100 --goal-pct 10

Prints one JSON line; ``per_vps_ms`` is the extra wall time per VPS with the journal on,
``slowdown_pct`` the run's wall time over the same run without a journal. With
``--goal-pct`` the script exits 1 when the slowdown is above it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from orchestrator.journal.journal import Journal, TargetSpec, TargetState
from orchestrator.model import Attempt, Outcome

REPO = Path(__file__).resolve().parents[2]


async def _flow(journal: Journal | None, run_id: str, kvm_ids: list[str], args: Any) -> None:
    post = args.post_ms / 1000
    queue = list(reversed(kvm_ids))

    async def worker() -> None:
        while queue:
            kvm_id = queue.pop()
            if journal is not None:
                await journal.write_intents(run_id, [kvm_id])
            started = time.perf_counter()
            await anyio.sleep(post)  # the reinstall POST
            if journal is not None:
                took = time.perf_counter() - started
                attempt = Attempt("set/reinstall", kvm_id, Outcome.ACCEPTED, 200, "ok", took)
                await journal.record_attempt(run_id, attempt)
                await journal.record_outcome(
                    run_id, kvm_id, TargetState.ACCEPTED, durable=args.durable_accepted
                )
            await anyio.sleep(post)  # readiness
            if journal is not None:
                await journal.record_outcome(run_id, kvm_id, TargetState.READY)

    async with anyio.create_task_group() as tg:
        for _ in range(args.concurrency):
            tg.start_soon(worker)
    if journal is not None:
        await journal.flush()


async def _one(
    args: Any, with_journal: bool, where: Callable[[int], str | Path], n: int
) -> dict[str, float]:
    kvm_ids = [f"kvm{i:05d}" for i in range(args.vps)]
    journal: Journal | None = None
    run_id = ""
    if with_journal:
        journal = await Journal.open(where(n))
        run_id = await journal.create_run(
            manifest_path="bench.yaml", manifest_sha256="0" * 64, plan_sha256="1" * 64
        )
        specs = [TargetSpec(k, i // 100, i % 100, "debian-12", k) for i, k in enumerate(kvm_ids)]
        await journal.add_targets(run_id, specs)
        await journal.acquire_locks(run_id, kvm_ids)
    commits0 = journal.commits if journal else 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await _flow(journal, run_id, kvm_ids, args)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    commits = (journal.commits - commits0) if journal else 0
    if journal is not None:
        done = sum(t.state is TargetState.READY for t in await journal.targets(run_id))
        assert done == args.vps, f"only {done} of {args.vps} VPSes ready in the journal"
        await journal.close()
    return {"wall": wall, "cpu": cpu, "commits": commits}


async def main(args: Any) -> None:
    """Run both variants ``--repeat`` times, keep the best of each and print the JSON line."""
    server = None
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)

        def where(n: int) -> str | Path:
            if args.backend == "sqlite":
                return folder / f"journal-{n}.sqlite"
            if args.url:
                return str(args.url)
            assert server is not None
            return str(server.create_database(prefix="bench"))

        if args.backend == "postgresql" and not args.url:
            sys.path.insert(0, str(REPO))
            from tests.pg_support import start_server

            server = start_server(fsync=True, port=args.pg_port)
        try:
            best: dict[bool, dict[str, float]] = {}
            for n in range(args.repeat):
                for on in (False, True):
                    got = await _one(args, on, where, n)
                    if on not in best or got["wall"] < best[on]["wall"]:
                        best[on] = got
        finally:
            if server is not None:
                server.stop()
    off, on = best[False], best[True]
    result = {
        "backend": args.backend,
        "vps": args.vps,
        "concurrency": args.concurrency,
        "post_ms": args.post_ms,
        "durable_accepted": args.durable_accepted,
        "wall_off_s": round(off["wall"], 4),
        "wall_on_s": round(on["wall"], 4),
        "per_vps_ms": round((on["wall"] - off["wall"]) / args.vps * 1000, 4),
        "cpu_per_vps_ms": round((on["cpu"] - off["cpu"]) / args.vps * 1000, 4),
        "slowdown_pct": round((on["wall"] / off["wall"] - 1) * 100, 1),
        "commits": int(on["commits"]),
        "vps_per_commit": round(args.vps / max(1, on["commits"]), 1),
    }
    print(json.dumps(result))
    if args.goal_pct is not None and result["slowdown_pct"] > args.goal_pct:
        print(f"journal cost {result['slowdown_pct']}% > goal {args.goal_pct}%", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vps", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--post-ms", type=float, default=0.0, help="simulated POST/readiness")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=".", help="where the temporary journal goes")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", help="a PostgreSQL database to use (default: a throwaway one)")
    parser.add_argument("--pg-port", type=int, default=5433, help="the throwaway server's port")
    parser.add_argument("--goal-pct", type=float, help="exit 1 above this slowdown")
    parser.add_argument(
        "--no-durable-accepted",
        dest="durable_accepted",
        action="store_false",
        help="buffer the accepted outcome instead of waiting for its commit",
    )
    anyio.run(main, parser.parse_args())
