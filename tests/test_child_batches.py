"""Short ``python:`` tasks run in batches in one reusable child: each keeps its own output, timings and
result; a crash, a timeout or a stop ends the batch at that task (real child processes, real pipes)."""

from __future__ import annotations

import os
import threading

import pytest

from eas_controller.registry import TaskType
from eas_controller.worker.child import END_MARK
from eas_controller.worker.execution import batchable, prepare
from eas_controller.worker.logs import LogBuffer, PipeLines
from eas_controller.worker.pool import PythonChild, _MarkedPipe

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def child(monkeypatch):
    monkeypatch.syspath_prepend(HERE)  # the child gets the worker's sys.path: it finds batch_tasks there
    child = PythonChild()
    yield child
    child.close()


def _batch(tmp_path, target: str, descriptions: list[dict], timeout: float | None = None, first_id: int = 1):
    task_type = TaskType(name="short", kind="python", target=target, timeout_s=timeout)
    items = []
    for number, description in enumerate(descriptions, start=first_id):
        claim = dict(attempt_id=number, task_id=number, description=description, working_directory="", metadata={},
                     requested_metadata={})
        assert batchable(claim, task_type)
        prepared = prepare(claim, task_type, str(tmp_path), None, LogBuffer())
        items.append((prepared, {"metadata": {}, "requested_metadata": {}}, threading.Event()))
    return items


def _messages(prepared) -> list[tuple[str, str]]:
    return [(stream, message) for _when, _severity, stream, message in prepared.logs.take()]


def test_each_task_of_a_batch_keeps_its_own_output_and_metadata(child, tmp_path):
    items = _batch(tmp_path, "batch_tasks:chatter", [{"tag": "t%d" % k} for k in range(12)])
    outcomes = list(child.run_batch(items))
    assert [index for index, _outcome in outcomes] == list(range(12))
    assert child.requests == 1 and child.tasks_run == 12  # one round trip for the twelve
    for (index, outcome), (prepared, _metadata, _stop) in zip(outcomes, items):
        tag = "t%d" % index
        assert outcome.succeeded and outcome.metadata == {"tag": tag}
        assert outcome.started_at is not None and outcome.wall_s > 0
        assert sorted(_messages(prepared)) == sorted([
            ("stdout", "out " + tag), ("stderr", "err " + tag), ("stdout", "raw " + tag), ("stdout", "sub " + tag),
            ("stdout", "tail " + tag), ("task", "ctx " + tag)])
    starts = [outcome.started_at for _index, outcome in outcomes]
    assert starts == sorted(starts)  # one after the other, each with its own start
    # the child goes on as usual afterwards: a single task, then another batch
    single = _batch(tmp_path, "batch_tasks:chatter", [{"tag": "single"}], first_id=50)[0]
    assert child.run(single[0], single[1]).succeeded
    assert ("stdout", "tail single") in _messages(single[0])
    again = _batch(tmp_path, "batch_tasks:chatter", [{"tag": "a"}, {"tag": "b"}], first_id=60)
    assert [outcome.succeeded for _index, outcome in child.run_batch(again)] == [True, True]
    assert ("stdout", "out b") in _messages(again[1][0]) and ("stdout", "out a") not in _messages(again[1][0])


def test_a_crash_ends_the_batch_at_the_task_that_crashed(child, tmp_path):
    items = _batch(tmp_path, "batch_tasks:behave", [{"tag": "a"}, {"tag": "b"}, {"tag": "c", "action": "crash"},
                                                   {"tag": "d"}])
    outcomes = list(child.run_batch(items))
    assert [(index, outcome.succeeded) for index, outcome in outcomes] == [(0, True), (1, True), (2, False)]
    assert outcomes[2][1].error_text == "the task's process exited with status 7"
    assert ("stdout", "start c") in _messages(items[2][0])  # its output up to the crash is its own
    assert ("stdout", "start c") not in _messages(items[1][0])
    assert not _messages(items[3][0])  # never started: the caller runs it again
    retry = _batch(tmp_path, "batch_tasks:behave", [{"tag": "d"}], first_id=9)
    assert child.run(retry[0][0], retry[0][1]).succeeded  # a fresh child


def test_a_timeout_or_a_stop_ends_the_batch_at_that_task(child, tmp_path):
    items = _batch(tmp_path, "batch_tasks:behave", [{"tag": "a"}, {"tag": "b", "action": "sleep", "seconds": 30},
                                                   {"tag": "c"}], timeout=1.0)
    outcomes = list(child.run_batch(items))
    assert [index for index, _outcome in outcomes] == [0, 1]
    assert outcomes[1][1].timed_out and outcomes[1][1].wall_s >= 0.9  # not before its timeout
    items = _batch(tmp_path, "batch_tasks:behave", [{"tag": "a"}, {"tag": "b", "action": "sleep", "seconds": 30},
                                                   {"tag": "c"}], first_id=20)
    timer = threading.Timer(0.5, items[1][2].set)
    timer.start()
    outcomes = list(child.run_batch(items))
    timer.join()
    assert [index for index, _outcome in outcomes] == [0, 1] and outcomes[1][1].stopped


def test_end_marks_split_anywhere_between_reads_still_separate_the_tasks():
    stream = b"one\ntwo" + END_MARK + b"three\n" + END_MARK + END_MARK + b"four"
    expected = {0: ["one", "two"], 1: ["three"], 2: [], 3: ["four"]}
    for cut in range(1, len(stream)):
        for second_cut in (cut, min(len(stream), cut + 5)):
            sinks = {index: LogBuffer() for index in range(4)}
            mark, lines = _MarkedPipe(), PipeLines("stdout")
            for piece in (stream[:cut], stream[cut:second_cut], stream[second_cut:]):
                if piece:
                    mark.feed(piece, lines, sinks.__getitem__)
            lines.finish(sinks[mark.index])
            got = {index: [line[3] for line in sink.take()] for index, sink in sinks.items()}
            assert got == expected, (cut, second_cut)
