"""A fuzzing campaign over satchel's readers: tests/test_fuzz.py's targets, more examples.

``make test`` runs a small derandomized slice of each target and stops at the first failure;
this script runs as many examples as asked, counts every outcome, and keeps going after a
failure so that the counts are complete. Each target runs in its own process (``--jobs`` at a
time) under ``RLIMIT_AS``, so a crash in a C library (libhdf5 parses ``.h5`` files) is
reported with the mutant that caused it instead of ending the campaign.

    python benchmarks/fuzz.py --examples 5000 --format torch-zip --format npy
    python benchmarks/fuzz.py --examples 2000 --jobs 2 --save-failures /tmp/fuzz-failures
    python benchmarks/fuzz.py --replay torch-zip '{"file": "", "ops": [["flip", 3, 1]]}'

Outcomes per example: ``loaded`` (plain data), a SatchelError class name (a clean refusal), or a
failure: another exception type, a non-plain result, a hang (``HANG_SECONDS``), a crash.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_fuzz as tf  # the targets live with the tests


def worker(name: str, examples: int, seed: int, out: Path, save: Path | None) -> None:
    """Run one target; write ``{outcomes, failures, seconds}`` to ``out`` as JSON."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed

    root = Path(tempfile.mkdtemp(prefix=f"satchel-fuzz-{name}-"))
    (root / "seed").mkdir()
    seed_path = tf.TARGETS[name](root / "seed")
    current = out.with_suffix(".current.json")
    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[dict[str, Any]] = []

    @settings(
        max_examples=examples,
        derandomize=False,
        database=None,
        deadline=None,  # hangs are caught by the interval timer in check()
        suppress_health_check=list(HealthCheck),
    )
    @hseed(seed)
    @given(tf.strategy(name, seed_path))
    def run(mutant: tf.Mutant) -> None:
        current.write_text(json.dumps({"file": mutant.file, "ops": mutant.ops}, default=_hex))
        path = tf.place(seed_path, mutant, root / "case")
        try:
            outcomes[tf.check(path)] += 1
        except BaseException as e:  # every failure is counted, not raised
            outcomes["FAILED"] += 1
            failures.append(
                {"file": mutant.file, "ops": json.loads(current.read_text())["ops"],
                 "error": f"{type(e).__name__}: {e}"[:300],
                 "where": traceback.format_exc().strip().splitlines()[-3][:200]}
            )  # fmt: skip
            if save is not None:
                save.mkdir(parents=True, exist_ok=True)
                (save / f"{name}-{len(failures):04d}.bin").write_bytes(mutant.data)

    t0 = time.perf_counter()
    try:
        run()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"outcomes": outcomes, "failures": failures, "seconds": time.perf_counter() - t0}
    out.write_text(json.dumps(result))
    current.unlink(missing_ok=True)


def _hex(x: Any) -> Any:
    if isinstance(x, bytes):
        return {"hex": x.hex()}
    raise TypeError(type(x).__name__)


def _ops(raw: list[list[Any]]) -> list[tf.Op]:
    return [tuple(bytes.fromhex(a["hex"]) if isinstance(a, dict) else a for a in op) for op in raw]


def replay(name: str, spec: str) -> int:
    """Rebuild one mutant of ``name``'s seed from its ``{"file", "ops"}`` and load it."""
    m = json.loads(spec)
    root = Path(tempfile.mkdtemp(prefix=f"satchel-replay-{name}-"))
    (root / "seed").mkdir()
    seed_path = tf.TARGETS[name](root / "seed")
    data = tf.rebuild(name, seed_path, m["file"], _ops(m["ops"]))
    path = tf.place(seed_path, tf.Mutant(m["file"], _ops(m["ops"]), data), root / "case")
    print(f"mutant written to {path}")
    print(tf.check(path))
    return 0


def run_target(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out = work / f"{name}.json"
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", name,
        "--examples", str(args.examples), "--seed", str(args.seed), "--out", str(out),
    ]  # fmt: skip
    if args.save_failures:
        cmd += ["--save-failures", str(args.save_failures)]
    limit = args.memory_mib << 20

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, preexec_fn=cap, check=False,
        timeout=args.timeout,
    )  # fmt: skip
    if out.exists():
        result: dict[str, Any] = json.loads(out.read_text())
        return result
    current = out.with_suffix(".current.json")
    last = current.read_text() if current.exists() else "?"
    return {
        "outcomes": {"CRASHED": 1},
        "failures": [
            {"file": "", "ops": last, "error": f"worker exit {proc.returncode}: "
             f"{proc.stderr[-400:]}", "where": "while loading the mutant in 'ops'"}
        ],
        "seconds": time.perf_counter() - t0,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=1000, help="examples per target")
    ap.add_argument("--format", action="append", choices=list(tf.TARGETS), help="repeatable")
    ap.add_argument("--seed", type=int, default=1, help="hypothesis seed (reproducible runs)")
    ap.add_argument("--jobs", type=int, default=1, help="targets run at a time")
    ap.add_argument("--memory-mib", type=int, default=4096, help="RLIMIT_AS per target")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per target")
    ap.add_argument("--save-failures", type=Path, help="write failing mutants here")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--replay", nargs=2, metavar=("FORMAT", "MUTANT_JSON"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.replay:
        return replay(*args.replay)
    if args.worker:
        worker(args.worker, args.examples, args.seed, args.out, args.save_failures)
        return 0
    names = args.format or list(tf.TARGETS)
    work = Path(tempfile.mkdtemp(prefix="satchel-fuzz-"))
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = dict(
                zip(names, pool.map(lambda n: run_target(n, args, work), names), strict=True)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.examples} examples asked per target, seed {args.seed}, "
          f"{time.perf_counter() - t0:.0f} s with --jobs {args.jobs}\n")  # fmt: skip
    cols = ["examples", "loaded", "refused", "FAILED", "seconds"]
    if args.markdown:
        print("| target | " + " | ".join(cols) + " | refusals by class |")
        print("|---" + "|---:" * len(cols) + "|---|")
    else:
        print(f"{'target':<20}" + "".join(f"{c:>10}" for c in cols) + "  refusals by class")
    failed = 0
    for name, r in results.items():
        o = collections.Counter(r["outcomes"])
        bad = o["FAILED"] + o["CRASHED"]
        failed += bad
        refusals = {k: v for k, v in o.items() if k not in ("loaded", "FAILED", "CRASHED")}
        cells = [sum(o.values()), o["loaded"], sum(refusals.values()), bad, f"{r['seconds']:.0f}"]
        by_class = ", ".join(f"{k} {v}" for k, v in sorted(refusals.items()))
        if args.markdown:
            print(f"| {name} | " + " | ".join(str(c) for c in cells) + f" | {by_class} |")
        else:
            print(f"{name:<20}" + "".join(f"{c!s:>10}" for c in cells) + f"  {by_class}")
    for name, r in results.items():
        # One line per kind of failure (addresses stripped), with its shortest reproducer.
        kinds: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for f in r["failures"]:
            kinds[re.sub(r" at 0x[0-9a-f]+", "", f["error"])[:110]].append(f)
        for kind, group in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
            f = min(group, key=lambda f: len(json.dumps(f["ops"])))
            spec = json.dumps({"file": f["file"], "ops": f["ops"]})
            print(f"\nFAILED {name} x{len(group)}: {kind}\n  at {f['where']}\n  replay: python "
                  f"benchmarks/fuzz.py --replay {name} '{spec}'")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
