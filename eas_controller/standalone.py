"""Running one task, or a whole chain, on local files with no database, queue or server.

For authors of task implementations: the same chain expansion, the same child processes and the same
checks of outputs and metadata as a worker (:mod:`eas_controller.worker`), with the bookkeeping a
database would do kept in memory. Tasks run one at a time in dependency order; a failed task's
dependants are skipped. Products land under the data directory exactly where a cluster run puts them.
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import os
import shutil

from eas_controller import products, uris
from eas_controller.chains import (DO_WHILE, ChainError, evaluate_late_fields,
                                   expand_control_task, read_chain_text)
from eas_controller.registry import TaskType
from eas_controller.worker.completion import inspect_outputs
from eas_controller.worker.execution import Outcome, prepare, run_command
from eas_controller.worker.logs import LogBuffer
from eas_controller.worker.pool import PythonChild
from eas_controller.worker.transfer import Publication, Transfer, TransferError, fetch_for_attempt

SUCCEEDED, FAILED, SKIPPED, WAITING = "succeeded", "failed", "skipped", "waiting"


@dataclasses.dataclass
class Item:
    """One task of the run: a node of a plan, its place in the tree and what became of it."""

    id: int
    node: object
    parent: "Item | None"
    state: str = WAITING
    expansions: int = 0
    finished_expanding: bool = False
    error: str | None = None
    metadata: dict = dataclasses.field(default_factory=dict)
    outputs: dict = dataclasses.field(default_factory=dict)
    log_lines: list = dataclasses.field(default_factory=list)
    pass_number: int = 0  # of the do-while pass that created it


def _cfg_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_task_file(path: str) -> tuple[dict, str]:
    """A chain (``task_list``), a single task (``task``) in JSON, or the seed's ``.cfg`` test file
    (sections ``[task]``, ``[inputs]``, ``[outputs]``, ``[specs]`` ...); returns (chain, source, files), where
    ``files`` maps input names to the local files they are copied from."""
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as error:
        raise ChainError("%s: cannot read the task file: %s" % (path, error.strerror)) from None
    if path.endswith(".cfg"):
        parser = configparser.ConfigParser()
        parser.optionxform = str
        try:
            parser.read_string(text, source=path)
        except configparser.Error as error:
            raise ChainError("%s: not a valid .cfg file: %s" % (path, error)) from None
        if "task" not in parser:
            raise ChainError("%s: a .cfg task file needs a [task] section" % path)
        task = {key: _cfg_value(value) for key, value in parser["task"].items()}
        task = {key: value for key, value in task.items() if key not in ("job_name", "task_name", "working_directory")}
        for section in parser.sections():
            if section != "task":
                task[section] = {key: _cfg_value(value) for key, value in parser[section].items()}
        task = {"task": task.pop("task", "null"), **task}
        # As in the seed, an input is a path (relative to the .cfg file's folder) brought in under its base name.
        files = {}
        for semantic, given in dict(task.get("inputs") or {}).items():
            name = os.path.basename(str(given))
            files[name] = os.path.join(os.path.dirname(os.path.abspath(path)), str(given))
            task["inputs"][semantic] = name
        return {"job_name": "standalone", "task_list": [task]}, path, files
    chain = read_chain_text(text, path)
    if "task_list" not in chain and "task" in chain:
        chain = {"job_name": chain.get("job_name", "standalone"), "task_list": [chain]}
    return chain, path, {}


class StandaloneRun:
    """The in-memory stand-in for the database: tasks, their states, metadata and products."""

    def __init__(self, registry: dict[str, TaskType], data_dir: str, search_dirs: list[str],
                 files: dict[str, str] | None = None):
        self.registry = registry
        self.files = files or {}
        self.data_dir = os.path.abspath(data_dir)
        self.search_dirs = search_dirs
        self.items: list[Item] = []
        self.by_node: dict[int, Item] = {}
        self.by_id: dict[int, Item] = {}
        self.producers: dict[str, Item] = {}
        self.child = PythonChild()
        self.transfer = Transfer(os.path.join(self.data_dir, "cache", "standalone"))  # URIs; endpoint from the environment
        os.makedirs(os.path.join(self.data_dir, "scratch"), exist_ok=True)

    # -- building the tree -----------------------------------------------------------------------
    def add_plan(self, plan, parent: Item | None = None, pass_number: int = 0) -> None:
        for node in plan.nodes:
            if node.parent is not None:
                owner = self.by_node[id(node.parent)]
            elif node.parent_task_id is not None:
                owner = self.by_id[node.parent_task_id]
            else:
                owner = parent
            item = Item(id=len(self.items) + 1, node=node, parent=owner, pass_number=pass_number,
                        finished_expanding=not node.is_control or (node.expanded and node.task_type != DO_WHILE),
                        expansions=1 if node.is_control and node.expanded else 0)
            self.items.append(item)
            self.by_node[id(node)] = item
            self.by_id[item.id] = item
            for path in node.outputs.values():
                self.producers[path] = item
            for path in node.deferred_outputs:
                self.producers.setdefault(path, item)

    def children(self, item: Item) -> list[Item]:
        return [other for other in self.items if other.parent is item]

    def scope(self, item: Item | None) -> dict:
        """``requested_metadata`` of a task: its own sources' metadata and its ancestors' (nearest wins)."""
        chain = []
        while item is not None:
            chain.append(item)
            item = item.parent
        merged = {}
        for ancestor in reversed(chain):
            for source in ancestor.node.metadata_from:
                merged[source.name] = self.by_node[id(source)].metadata
        return merged

    # -- readiness -------------------------------------------------------------------------------
    def _blockers(self, item: Item) -> list[Item]:
        node = item.node
        blockers = [self.by_node[id(source)] for source in node.metadata_from]
        blockers += [self.by_node[id(producer)] for producer, _path, _semantic in node.file_dependencies]
        for path, _semantic in node.unresolved_inputs:
            producer = self.producers.get(path)
            if producer is not None and producer is not item:
                blockers.append(producer)
        return blockers

    def _settle(self) -> bool:
        """Mark skipped and finished control tasks; True when something changed."""
        changed = False
        for item in self.items:
            if item.state != WAITING:
                continue
            if any(blocker.state in (FAILED, SKIPPED) for blocker in self._blockers(item)) or (
                    item.parent is not None and item.parent.state in (FAILED, SKIPPED)):
                item.state, item.error = SKIPPED, "a task it depends on did not succeed"
                changed = True
            elif item.node.is_control and item.expansions and all(
                    child.state != WAITING for child in self.children(item)):
                if item.finished_expanding or not self._expand_again(item):
                    failed = [child for child in self.children(item) if child.state != SUCCEEDED]
                    item.state = FAILED if failed else SUCCEEDED
                    if failed:
                        item.error = "%d task(s) inside did not succeed" % len(failed)
                changed = True
        return changed

    def _ready(self, item: Item) -> bool:
        if item.state != WAITING or (item.node.is_control and item.expansions):
            return False
        return all(blocker.state == SUCCEEDED for blocker in self._blockers(item))

    # -- running ---------------------------------------------------------------------------------
    def _row(self, item: Item) -> dict:
        node = item.node
        return dict(id=item.id, task_type=node.task_type, chain_path=node.chain_path, job_name=node.job_name,
                    working_directory=node.working_directory, description=node.description, metadata=node.metadata,
                    priority=node.priority, expansions=item.expansions)

    def _expand(self, item: Item) -> None:
        try:
            plan, finished = expand_control_task(self._row(item), self.registry.keys(), self.scope(item))
        except ChainError as error:
            item.state, item.error = FAILED, str(error)
            return
        item.expansions += 1
        item.finished_expanding = finished
        self.add_plan(plan, item, pass_number=item.expansions)

    def _expand_again(self, item: Item) -> bool:
        """A do-while loop after a pass: expand the next pass if its repeat criterion holds."""
        names = item.node.description.get("requires_metadata_from_child") or []
        latest = {}
        for child in self.items:
            if child.parent is item and child.pass_number in (item.expansions, 0) and child.node.name in names:
                latest[child.node.name] = child.metadata
        if any(child.state != SUCCEEDED for child in self.children(item)):
            return False
        try:
            plan, finished = expand_control_task(self._row(item), self.registry.keys(), self.scope(item), latest)
        except ChainError as error:
            item.state, item.error = FAILED, str(error)
            return True
        if not plan.nodes:
            item.finished_expanding = True
            return False
        item.expansions += 1
        item.finished_expanding = finished
        self.add_plan(plan, item, pass_number=item.expansions)
        return True

    def _find_input(self, relative: str) -> None:
        """An input no task here makes: take it from the data directory, or copy it in from the task file's
        folder or the current directory."""
        target = products.product_path(self.data_dir, relative)
        if os.path.exists(target):
            return
        candidates = [self.files[relative]] if relative in self.files else []
        candidates += [os.path.join(folder, relative) for folder in self.search_dirs]
        for candidate in candidates:
            if os.path.isfile(candidate):
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(candidate, target)
                return
        raise ChainError("input file %s is not made by any task here, and is neither under %s nor under %s"
                         % (relative, self.data_dir, " or ".join(self.search_dirs)))

    def _run_leaf(self, item: Item) -> None:
        node = item.node
        task_type = self.registry.get(node.task_type)
        requested = self.scope(item)
        try:
            description = node.description
            if node.needs_evaluation:
                description = evaluate_late_fields(description, node.metadata, requested, node.chain_path or "<chain>")
            for path, _semantic in node.unresolved_inputs:
                if path not in self.producers and not uris.is_uri(path):  # a URI is fetched when the task runs
                    self._find_input(path)
        except ChainError as error:
            item.state, item.error = FAILED, str(error)
            return
        claim = dict(task_id=item.id, attempt_id=item.id, description=description,
                     working_directory=node.working_directory, metadata=node.metadata, requested_metadata=requested)
        prepared = prepare(claim, task_type, self.data_dir, logs=LogBuffer())
        try:
            fetch_for_attempt(prepared, self.transfer)
        except TransferError as error:
            outcome = Outcome(succeeded=False, error_text=str(error))
        else:
            if task_type.kind == "python":
                outcome = self.child.run(prepared, {"metadata": node.metadata, "requested_metadata": requested})
            else:
                outcome = run_command(prepared)
        made = inspect_outputs(prepared, outcome, self.child.check_products)
        if outcome.succeeded:
            publication = Publication(self.transfer)
            publication.expect(made)
            try:
                for semantic, facts in made.items():
                    publication.publish(facts.get("upload") or facts["staged"], facts["path"])
                    item.outputs[semantic] = facts["path"]
            except TransferError as error:
                publication.undo()
                outcome.succeeded, outcome.error_text = False, str(error)
            else:
                publication.commit()
            shutil.rmtree(prepared.work_dir, ignore_errors=True)
        item.state = SUCCEEDED if outcome.succeeded else FAILED
        item.error = outcome.error_text
        item.metadata = outcome.metadata if outcome.succeeded else {}
        item.log_lines = prepared.logs.take()

    def run(self, report=None) -> None:
        """Run everything that can run; ``report(item)`` is called as each task finishes."""
        try:
            while True:
                while self._settle():
                    pass
                ready = next((item for item in self.items if self._ready(item)), None)
                if ready is None:
                    break
                if ready.node.is_control:
                    self._expand(ready)
                else:
                    self._run_leaf(ready)
                    if report:
                        report(ready)
        finally:
            self.child.close()
            self.transfer.close()
        for item in self.items:  # whatever could not start (a cycle through the database view) is skipped
            if item.state == WAITING:
                item.state, item.error = SKIPPED, "never became ready"

    def summary(self) -> list[dict]:
        return [dict(task_id=item.id, parent_id=item.parent.id if item.parent else None, task_path=item.node.chain_path,
                     task_name=item.node.name, task_type=item.node.task_type, state=item.state, error=item.error,
                     metadata=item.metadata, outputs=item.outputs)
                for item in self.items if not item.node.is_control or item.state == FAILED]


__all__ = ["StandaloneRun", "read_task_file", "Outcome"]
