"""onnxruntime with onnxruntime-extensions, run in a child process without TensorFlow.

Measured here (TensorFlow 2.21, onnxruntime 1.31, onnxruntime-extensions
0.15.2): once TensorFlow is imported into a process, the extensions' regex
operators (StringRegexReplace, StringRegexSplitWithOffsets) answer wrongly
in it: "the cat!" is neither stripped of its '!' nor split, at every graph
optimization level. Both libraries carry RE2 and abseil, and TensorFlow's
symbols win. The converter has TensorFlow loaded by design, so the models
that need the extensions are checked in a fresh interpreter that imports
numpy and onnxruntime only (``python -m onnxserve.converter.isolated``),
the inputs and outputs passed as pickles over its stdin and stdout. The server
never imports TensorFlow, so it runs such models in process.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["run_isolated"]

Feeds = Mapping[str, np.ndarray]
# A model's serialized bytes and the input dicts to run it on.
Job = tuple[bytes, Sequence[Feeds]]
_TIMEOUT_S = 600


class IsolatedRunError(RuntimeError):
    """onnxruntime failed in the child process; the message is its error."""


def run_isolated(jobs: Sequence[Job]) -> list[list[dict[str, np.ndarray]]]:
    """For each (model, feeds) job, each feed's outputs by name (CPU, extensions loaded).

    Raises IsolatedRunError with onnxruntime's message when a session cannot
    be created or a run fails.
    """
    payload = pickle.dumps([(bytes(model), [dict(f) for f in feeds]) for model, feeds in jobs])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHONSTARTUP")}
    done = subprocess.run(
        [sys.executable, "-m", "onnxserve.converter.isolated"],
        input=payload,
        capture_output=True,
        timeout=_TIMEOUT_S,
        env=env,
        check=False,
    )
    if done.returncode != 0 or not done.stdout:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise IsolatedRunError(f"the onnxruntime check process failed: {tail[0][:500]}")
    status, result = pickle.loads(done.stdout)
    if status != "ok":
        raise IsolatedRunError(str(result))
    return result  # type: ignore[no-any-return]


def _serve(jobs: Sequence[Job]) -> list[list[dict[str, np.ndarray]]]:
    from onnxserve.sessions import create_session

    if "tensorflow" in sys.modules:  # the reason this process exists
        raise RuntimeError("TensorFlow is loaded in the isolated onnxruntime process")
    results = []
    for model, feeds in jobs:
        session = create_session(
            model, intra_op_threads=min(4, os.cpu_count() or 1), custom_ops=True
        )
        names = [o.name for o in session.get_outputs()]
        results.append(
            [dict(zip(names, session.run(names, dict(feed)), strict=True)) for feed in feeds]
        )
    return results


def _main() -> int:
    jobs = pickle.loads(sys.stdin.buffer.read())
    answer: tuple[str, Any]
    try:
        answer = ("ok", _serve(jobs))
    except Exception as exc:  # onnxruntime raises several unrelated types
        answer = ("error", str(exc).strip()[:500])
    sys.stdout.buffer.write(pickle.dumps(answer))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
