"""The runtime's thread budget: how decoding and inference share the cores (runtime/inference/threads.py)."""

from __future__ import annotations

import pytest

from mlic_edge.errors import MlicError
from mlic_edge.runtime.inference.threads import ThreadBudget, available_cores, plan_threads


@pytest.mark.parametrize("cores, inference, feed, overlap", [(1, 1, 1, False), (2, 2, 1, False), (4, 3, 1, True),
                                                              (16, 12, 4, True)])
def test_a_cpu_backend_gives_the_feed_a_core_in_four_from_four_cores(cores, inference, feed, overlap):
    budget = plan_threads(cores, "cpu")
    assert (budget.inference, budget.feed, budget.chosen_by) == (inference, feed, "policy")
    assert budget.overlap == overlap  # a file's decoding overlaps inference only on a core of its own
    assert budget.spinning  # in turn nothing runs beside the pool; overlapping, it has its own cores


@pytest.mark.parametrize("cores", [1, 2, 4, 16])
def test_a_gpu_backend_leaves_the_cpu_to_the_feed(cores):
    budget = plan_threads(cores, "cuda:0")
    assert budget.inference == 1 and budget.feed == max(1, cores - 1) and not budget.spinning and budget.overlap


def test_threads_option_fixes_inference_and_the_feed_gets_the_rest():
    assert plan_threads(16, "cpu", threads=4) == ThreadBudget(16, 4, 12, "--threads", True)
    oversubscribed = plan_threads(2, "cpu", threads=2)  # no core left for the feed: the stages run in turn
    assert (oversubscribed.inference, oversubscribed.feed, oversubscribed.overlap) == (2, 1, False)
    defaults = plan_threads(8, "cpu", threads=0)
    assert (defaults.inference, defaults.chosen_by) == (0, "library defaults")
    assert "defaults on 8 cores" in defaults.describe()
    with pytest.raises(MlicError, match="--threads -1"):
        plan_threads(2, "cpu", threads=-1)


def test_cores_are_the_affinity_mask(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert available_cores() == 3


def test_threads_reach_onnxruntimes_session_and_opencv(run_copy):
    import cv2
    import numpy as np

    from mlic_edge.rundir import RunDir
    from mlic_edge.runtime.inference.backends import create_backend
    from mlic_edge.runtime.inference.classifier import Classifier
    from mlic_edge.runtime.inference.pipeline import run_pipeline
    from mlic_edge.runtime.inference.sources import Frame
    from mlic_edge.spec import ModelSpec

    run = RunDir(run_copy)
    with create_backend("onnxruntime", run, device="cpu", threads=3) as backend:
        options = backend.session.get_session_options()
        assert options.intra_op_num_threads == 3 and options.inter_op_num_threads == 1
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == (
            "1" if backend.thread_budget.spinning else "0")
        assert backend.info.details["intra_op_threads"] == 3
        spec = ModelSpec.from_run(run.spec())
        seen = []

        class OneFrame:
            live = False

            def __iter__(self):
                seen.append(cv2.getNumThreads())  # while the pipeline runs, OpenCV has the feed's threads
                yield Frame(np.zeros((48, 64, 3), np.uint8), "x", 0, 0.0, 1.0)

        before = cv2.getNumThreads()
        run_pipeline(OneFrame(), Classifier(backend, spec), postprocess=lambda scores, meta: meta)
        assert seen == [backend.thread_budget.feed] and cv2.getNumThreads() == before


@pytest.mark.parametrize("threads, live", [(None, False), (1, False), (None, True)])
def test_files_run_their_stages_in_turn_where_inference_holds_every_core(run_copy, threads, live):
    """On 2 cores the policy gives inference both: a file's frames go through on one thread, in order and complete;
    with a core left to the feed (--threads 1), or for a live source, the four threads run."""
    import threading

    import numpy as np

    from mlic_edge.rundir import RunDir
    from mlic_edge.runtime.inference import threads as threads_module
    from mlic_edge.runtime.inference.backends import create_backend
    from mlic_edge.runtime.inference.classifier import Classifier
    from mlic_edge.runtime.inference.pipeline import run_pipeline
    from mlic_edge.runtime.inference.sources import Frame
    from mlic_edge.spec import ModelSpec

    run = RunDir(run_copy)
    workers = set()

    class Frames:
        def __init__(self):
            self.live = live

        def __iter__(self):
            for index in range(5):
                workers.add(threading.current_thread().name)
                yield Frame(np.full((48, 64, 3), index * 40, np.uint8), f"f{index}", index, 0.0, 1.0)

    original = threads_module.available_cores
    try:
        threads_module.available_cores = lambda: 2
        with create_backend("onnxruntime", run, device="cpu", threads=threads) as backend:
            records = []
            stats = run_pipeline(Frames(), Classifier(backend, ModelSpec.from_run(run.spec())), batch_size=2,
                                 postprocess=lambda scores, meta: meta, on_result=lambda f, r: records.append(r))
    finally:
        threads_module.available_cores = original
    if not live:  # (a live source keeps only the newest frame: this one, faster than any model, drops most)
        assert [record["index"] for record in records] == list(range(5)) and stats.frames == 5
    in_turn = threads is None and not live
    assert workers == {"mlic-edge-in_turn" if in_turn else "mlic-edge-capture"}
