"""``bench/claim.py``: a small run on each backend drains the queue with remind's claim and
with the baseline's one-query claim, and each takes every due contact once and none of the
not-yet-due ones. Speed is not asserted here; the benchmark measures it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_small_run_takes_every_due_contact_once(
    backend: str, request: pytest.FixtureRequest
) -> None:
    env = dict(os.environ)
    if backend == "postgres":
        env["REMIND_BENCH_PG_URL"] = request.getfixturevalue("pg_url")
    done = subprocess.run(
        [sys.executable, "bench/claim.py", "--store", backend, "--due", "300", "--later",
         "700", "--priorities", "3", "--batch", "40", "--json"],
        cwd=REPO, capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    for side in ("remind", "baseline"):
        assert result[side]["contacts"] == result[side]["distinct"] == 300
        assert result[side]["claims"] == 300 // 40 + 2  # 8 batches, then an empty claim
    assert result["ratio"] > 0
