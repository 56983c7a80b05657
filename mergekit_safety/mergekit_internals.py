"""The one door into mergekit's internals: everything beyond its public method API lives here.

mergekit 0.1.5 offers plugins a method API (``register``, ``@merge_method``, ``TensorGroup``,
``merge_tensors``) and a run API (``run_merge``, ``MergeConfiguration``, ``MergeOptions``). The
rest of the package uses only those; what they cannot do goes through this module, which
imports nothing of ours but :mod:`mergekit_safety.core.errors`, ``runs`` and ``parameters`` and
hands the layers above plain views (:class:`PlannedTensor`, :class:`PlannedRecipe`), never
mergekit's own task objects.

What it relies on, each checked by ``tests/test_mergekit_internals.py`` against the installed
mergekit (a failing check names the assumption):

1. ``mergekit.plan.MergePlanner.normalize_config(self)`` runs once per planned merge, after the
   recipe is normalised and before any tensor task exists, with ``self.config``,
   ``self.options``, ``self.arch_info``, ``self.out_model_config`` set: wrapped to run the
   recipe-level checks and the ``top_k`` ρ pass (:func:`install`'s ``on_recipe``).
2. ``MergePlanner.plan_to_disk(self, out_path)`` is how ``run_merge`` plans: wrapped to hand
   the recipe hook its output directory (otherwise out of reach), and, once it returns the tasks
   (each ``SaveTensor`` with a ``tensor_task``), to hand the planned tensors to ``on_planned``
   (the ``top_k`` ρ pass over the very tasks the merge runs) before anything executes.
   ``mergekit.merge.run_merge(merge_config, out_path, options, ...)`` is every command's merge
   (``mergekit-yaml``, ``-multi``, ``-evolve``, the Python API), and the ``mergekit-pytorch``
   command's click ``callback`` its whole merge: each is wrapped to run inside a merge run of its
   own (:mod:`mergekit_safety.core.runs`), which ends with it and undoes its output if it fails.
3. ``mergekit.merge_methods.task_adapter.ExecuteMergeMethodTask`` is built once per output tensor
   (by the planner and by ``mergekit-pytorch``) with fields ``method_name``, ``model_order``,
   ``base_model``, ``parameters``, ``input_parameters``, ``output_weight``: its ``__init__`` is
   wrapped to check each planned tensor (roles, parameter domains) before anything loads.
4. ``mergekit.io.tasks.FinalizeModel.execute`` runs once, after every tensor of a merge is written,
   with ``tensor_save_tasks`` (each with a ``tensor_task``) and ``writer_task.out_path``: wrapped
   to say that the merge is done, where, and what was merged.
5. ``mergekit.parameter_resolver.resolve_parameter(parameter, settings, *, tensor_name, t, model)``
   resolves each recipe value; wrapped so that a bad value is reported with its parameter and
   model (pydantic's own error names neither).
6. ``mergekit.io.loader.TensorLoader.get(shard_path, ...)`` and
   ``mergekit.io.lazy_tensor_loader.ShardedTensorIndex.from_file(file_path)`` open every shard;
   wrapped so that an unreadable safetensors file is reported by name.
7. ``mergekit.graph.Executor(targets, math_device=...)`` and ``mergekit.graph.Task`` run our own
   per-tensor work (scoring ρ) over the planner's tasks, with mergekit's loading and device rules.
8. ``mergekit.io.tasks.LoaderCache`` (a process-wide singleton with ``setup``, ``get(model)`` and a
   ``loaders`` dict) is mergekit's lazy loader: reading one tensor at a time, and forgetting a
   merged LoRA copy we removed.
9. ``mergekit.architecture.get_architecture_info`` and ``mergekit.merge._model_out_config`` plan a
   recipe exactly as ``run_merge`` does, without running it.
10. ``mergekit.merge_methods.dtype.align_dtype`` casts an API call's tensors as mergekit does.
11. ``mergekit.merge._model_out_config`` sets the output config's ``torch_dtype``, which
    transformers 5 answers with "`torch_dtype` is deprecated! Use `dtype` instead!" on every
    merge: a warning about mergekit's code that a user cannot act on, filtered out
    (:func:`_quiet_torch_dtype_warning`; only that message, only from transformers' config).

12. ``mergekit.graph.Executor.run`` and ``mergekit.multigpu_executor.MultiGPUExecutor.run`` are
    generators that execute a plan: wrapped so that a merge that raises while running undoes its
    output in process; ``MultiGPUExecutor._device_worker(self, ...)`` runs each GPU's tasks in a
    worker thread: wrapped to run them inside the merge's run (threads start with no context).
14. ``mergekit.config.MergeConfiguration.model_validate(obj)`` is how every mergekit command
    reads a recipe: wrapped to see the recipe as written (pydantic drops unknown keys), so that a
    misspelled key in a recipe of ours is refused before anything loads.
15. ``MergePlanner.plan_in_memory()`` — mergekit's in-memory path (``mergekit.evo``'s
    ``InMemoryMergeEvaluator``) — raises in 0.1.5: pydantic re-validates ``ReturnTensor``'s generic
    ``tensor_task`` field and tries to build the abstract ``Task[Tensor]``. So
    :func:`merge_in_memory` takes the to-disk plan's ``SaveTensor`` tasks (``tensor_name``,
    ``tensor_task``, ``dtype``: the same ``force_dtype or out_dtype`` that ``plan_in_memory``
    gives each ``ReturnTensor``), wraps each in mergekit's own ``ReturnTensor`` built without
    re-validation (``model_construct``), and runs them on ``mergekit.graph.Executor`` as
    ``run_merge`` runs a plan; each value is the tensor ``mergekit-yaml`` would write.
16. ``mergekit.card.is_hf(path)`` decides whether a recipe's model is a Hub repository, for the
    card ``run_merge`` writes after the merge; it asks the Hub about any existing path with one
    ``/`` (``um/aligned``, the usual way to write a local path), which online costs a traceback
    after a finished merge and offline a wrong one-line error. mergekit itself loads an existing
    local path as a local model (``ModelPath.local_path``), so :func:`_wrap_card` answers the same
    for such a path: an existing local directory is a local model; the Hub is not asked.
17. ``GatherTensors.weight_info`` (model -> ``WeightInfo`` with ``name``, ``aliases``,
    ``tied_names``, ``optional``) is what a planned tensor loads per input, possibly wrapped
    (``PermutedVocabulary``, ``TruncatedVocabulary``: an attribute ``gather_tensors``), read by
    :class:`PlannedTensor` to check every input against the file headers while planning.
18. ``ModelReference.merged(cache_dir)`` writes a ``model+adapter`` merge to
    ``cache_dir/{model._unique_id()}_{lora._unique_id()}`` (:func:`merged_copy_name`), where
    ``lora_cache`` finds (and clears) an interrupted one.
19. mergekit's, transformers' and torch's own error texts for user mistakes
    (:data:`FOREIGN_MESSAGES`), which the one-line reports match.
13. ``mergekit.merge_methods.base.MergeMethod._bind_parameters(groups, parameters)`` (the Python
    API's binding) and ``MergeMethod._execute(groups, parameters, options, *, input_dtypes,
    out_dtype)`` (both entry points' execution) are overridden by :class:`PluginMethod`, and
    ``_execute`` is called on the stock-shaped kernels our methods wrap (:func:`execute_method`).

The wrappers are installed by :func:`install`, called from ``mergekit_safety.plugin.activate``,
when each module finishes importing (the ``.pth`` hook's ``after_import``), so an entry point
that never plans (``merge_tensors``) pays no import. One
order delays them: a program whose first mergekit import is ``mergekit.plan`` itself has it
half-imported when our methods register, so it is wrapped at the program's next import (as
``from mergekit.merge import run_merge``); ``mergekit-yaml``, ``-multi``, ``-pytorch``,
``run_merge`` and the method API all import in the order that wraps at once.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from mergekit.merge_methods.base import MergeMethod
from pydantic import ValidationError

from mergekit_safety.core import runs
from mergekit_safety.core.errors import ConfigError
from mergekit_safety.core.parameters import domain_error

# --- views handed to the layers above ------------------------------------------------------------


@dataclass(frozen=True)
class PlannedInput:
    """One model's input to a planned tensor: the names mergekit looks for, in its order."""

    model: Any
    names: tuple[str, ...]
    """The weight's name, its aliases, its tied names: mergekit loads the first one present."""
    optional: bool


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor as mergekit planned it: which method, inputs and resolved parameters."""

    name: str
    aliases: tuple[str, ...]
    vocabulary: bool
    """Has a vocabulary axis (embeddings, lm_head): never gated."""
    method: str
    models: tuple[Any, ...]
    base: Any
    parameters: dict[str, Any]
    input_parameters: dict[Any, dict[str, Any]]
    task: Any = field(repr=False, compare=False)
    """mergekit's ``ExecuteMergeMethodTask``: only this module looks inside it."""
    inputs: tuple[PlannedInput, ...] = field(default=(), repr=False, compare=False)
    vocabulary_aligned: bool = False
    """The recipe's ``tokenizer`` section aligns this tensor's vocabulary axis before merging."""

    @classmethod
    def of(cls, task: Any) -> PlannedTensor:
        weight = task.output_weight
        gather = task.gather_tensors
        aligned = type(gather).__name__ != "GatherTensors"  # PermutedVocabulary, Truncated...
        gather = getattr(gather, "gather_tensors", gather)
        return cls(
            name=weight.name,
            aliases=tuple(weight.aliases or ()),
            vocabulary=weight.vocabulary_axis is not None,
            method=task.method_name,
            models=tuple(task.model_order),
            base=task.base_model,
            parameters=dict(task.parameters.items()),
            input_parameters={
                model: dict(values.items()) for model, values in task.input_parameters.items()
            },
            task=task,
            inputs=tuple(
                PlannedInput(
                    model=model,
                    names=(info.name, *(info.aliases or ()), *(info.tied_names or ())),
                    optional=bool(info.optional),
                )
                for model, info in getattr(gather, "weight_info", {}).items()
            ),
            vocabulary_aligned=aligned,
        )


@dataclass
class PlannedRecipe:
    """A merge mergekit is planning: its (normalised, mutable) recipe and where it will write."""

    config: Any
    options: Any
    arch_info: Any
    out_config: Any
    out_path: str | None
    """None when the plan is not to disk (or is our own scoring plan)."""


@dataclass(frozen=True)
class WrittenMerge:
    """A merge whose tensors are all written: where, and the tensors it planned."""

    out_path: str
    tensors: tuple[PlannedTensor, ...]


@dataclass
class Hooks:
    """What the recipe machinery wants to hear while mergekit plans and runs a merge."""

    on_config: Callable[[Any, Any], None]
    """(the recipe as read, the ``MergeConfiguration`` mergekit made of it)."""
    on_recipe: Callable[[PlannedRecipe], None]
    on_tensor: Callable[[PlannedTensor], None]
    on_planned: Callable[[PlannedRecipe, list[PlannedTensor]], None]
    """Once a ``MergePlanner`` planned every tensor, before anything runs (the ``top_k`` pass)."""
    on_written: Callable[[WrittenMerge], None]


AfterImport = Callable[[str, Callable[[Any], None]], None]
"""``after_import(module_name, callback)``: the ``.pth`` hook's, passed down by ``activate``."""


def install(hooks: Hooks, after_import: AfterImport) -> None:
    """Have mergekit call ``hooks`` for every merge it plans from now on.

    Each wrapper is installed when its module finishes importing (``after_import``), and only
    once: a second call finds mergekit's functions already wrapped and leaves them.
    """
    after_import("mergekit.config", lambda module: _wrap_config(module, hooks))
    after_import("mergekit.plan", lambda module: _wrap_planner(module, hooks))
    after_import("mergekit.merge", wrap_merge)  # the .pth hook wraps it sooner (it binds early)
    after_import("mergekit.scripts.merge_raw_pytorch", _wrap_raw_pytorch)
    after_import("mergekit.merge_methods.task_adapter", lambda module: _wrap_task(module, hooks))
    after_import("mergekit.io.tasks", lambda module: _wrap_finalize(module, hooks))
    after_import("mergekit.graph", _wrap_executor)
    after_import("mergekit.multigpu_executor", _wrap_multi_gpu_executor)
    after_import("mergekit.parameter_resolver", _wrap_resolver)
    after_import("mergekit.io.loader", _wrap_loader)
    after_import("mergekit.io.lazy_tensor_loader", _wrap_index)
    after_import("transformers.configuration_utils", _quiet_torch_dtype_warning)
    after_import("mergekit.card", _wrap_card)


def _once(owner: Any, name: str, make: Callable[[Callable], Callable]) -> None:
    """Replace ``owner.name`` by ``make(original)``, unless we already did."""
    original = getattr(owner, name)
    if getattr(original, "_mergekit_safety", False):
        return
    wrapped = make(original)
    wrapped._mergekit_safety = True  # type: ignore[attr-defined]
    setattr(owner, name, wrapped)


def _wrap_config(module: Any, hooks: Hooks) -> None:
    """``MergeConfiguration.model_validate``: the recipe as written, before pydantic drops keys."""
    owner = module.MergeConfiguration
    original = owner.__dict__.get("model_validate", None) or owner.model_validate
    function = getattr(original, "__func__", original)
    if getattr(function, "_mergekit_safety", False):
        return

    @functools.wraps(function)
    def model_validate(cls: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
        config = function(cls, obj, *args, **kwargs)
        if isinstance(obj, dict):
            hooks.on_config(obj, config)
        return config

    model_validate._mergekit_safety = True  # type: ignore[attr-defined]
    owner.model_validate = classmethod(model_validate)


_OUT_PATH = "_mergekit_safety_out_path"
"""Set on a ``MergePlanner`` while ``plan_to_disk`` runs: where that plan writes."""


def wrap_merge(module: Any) -> None:
    """``run_merge`` is one merge from plan to written files: it runs inside a run of its own
    (:func:`mergekit_safety.core.runs.opened`), which ends with it and undoes its output if it
    fails."""

    def run_merge(original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(merge_config: Any, out_path: str, options: Any, *args: Any, **kw: Any) -> Any:
            run = runs.MergeRun(out_path=str(out_path), quiet=bool(options.quiet))
            with runs.opened(run):
                return original(merge_config, out_path, options, *args, **kw)

        return wrapper

    _once(module, "run_merge", run_merge)


def _wrap_raw_pytorch(module: Any) -> None:
    """``mergekit-pytorch`` plans without ``MergePlanner``: its command is one merge, one run."""
    command = module.main

    def callback(original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with runs.opened(runs.MergeRun()):
                return original(*args, **kwargs)

        return wrapper

    _once(command, "callback", callback)


def _wrap_planner(module: Any, hooks: Hooks) -> None:
    """The recipe-level hook before any task exists; the planned-merge hook once every task does.

    A plan to disk tells the hooks where it writes (otherwise out of reach); the merge's run was
    opened by ``run_merge`` (:func:`_wrap_merge`). A plan aimed at ``os.devnull`` (our scoring
    plans, a search's in-memory merge) writes nowhere.
    """
    planner = module.MergePlanner

    def recipe_of(self: Any) -> PlannedRecipe:
        return PlannedRecipe(
            config=self.config,
            options=self.options,
            arch_info=self.arch_info,
            out_config=self.out_model_config,
            out_path=getattr(self, _OUT_PATH, None),
        )

    def plan_to_disk(original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(self: Any, out_path: str, *args: Any, **kwargs: Any) -> Any:
            import os

            from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

            if str(out_path) != os.devnull:
                setattr(self, _OUT_PATH, str(out_path))
            try:
                targets = original(self, out_path, *args, **kwargs)
                tensors = [
                    PlannedTensor.of(target.tensor_task)
                    for target in targets
                    if isinstance(getattr(target, "tensor_task", None), ExecuteMergeMethodTask)
                ]
                hooks.on_planned(recipe_of(self), tensors)
                return targets
            finally:
                if hasattr(self, _OUT_PATH):
                    delattr(self, _OUT_PATH)

        return wrapper

    def normalize_config(original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            hooks.on_recipe(recipe_of(self))
            return result

        return wrapper

    _once(planner, "plan_to_disk", plan_to_disk)
    _once(planner, "normalize_config", normalize_config)


def _wrap_task(module: Any, hooks: Hooks) -> None:
    def init(original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            hooks.on_tensor(PlannedTensor.of(self))

        return wrapper

    _once(module.ExecuteMergeMethodTask, "__init__", init)


def _wrap_finalize(module: Any, hooks: Hooks) -> None:
    def execute(original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            tensors = tuple(
                PlannedTensor.of(save.tensor_task)
                for save in self.tensor_save_tasks
                if type(save.tensor_task).__name__ == "ExecuteMergeMethodTask"
            )
            hooks.on_written(WrittenMerge(str(self.writer_task.out_path), tensors))
            return result

        return wrapper

    _once(module.FinalizeModel, "execute", execute)


def _failing_run_undone(original: Callable) -> Callable:
    """Wrap an executor's ``run`` generator: if it raises, the current merge undoes its output."""

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            yield from original(self, *args, **kwargs)
        except (Exception, KeyboardInterrupt):
            run = runs.current()
            if run is not None:
                run.fail()
            raise

    return wrapper


def _wrap_executor(module: Any) -> None:
    _once(module.Executor, "run", _failing_run_undone)


_RUN_OF_EXECUTOR = "_mergekit_safety_run"
"""Set on a ``MultiGPUExecutor`` by its ``run``: the merge its worker threads report to."""


def _wrap_multi_gpu_executor(module: Any) -> None:
    """Multi-GPU: the worker threads report to the merge that started them (``runs.bound``)."""
    executor = module.MultiGPUExecutor

    def run(original: Callable) -> Callable:
        undone = _failing_run_undone(original)

        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            setattr(self, _RUN_OF_EXECUTOR, runs.current())
            return undone(self, *args, **kwargs)

        return wrapper

    def device_worker(original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            run = getattr(self, _RUN_OF_EXECUTOR, None)
            return runs.bound(original, run)(self, *args, **kwargs)

        return wrapper

    _once(executor, "run", run)
    _once(executor, "_device_worker", device_worker)


def _wrap_resolver(module: Any) -> None:
    def resolve(original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(parameter: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return original(parameter, *args, **kwargs)
            except ValidationError as error:
                raise domain_error(parameter.name, error, kwargs.get("model")) from error

        return wrapper

    _once(module, "resolve_parameter", resolve)


def _named_shard(owner: Any, name: str) -> None:
    """Wrap the classmethod ``owner.name(cls, path, ...)``: an unreadable shard is named."""
    original = getattr(owner, name).__func__
    if getattr(original, "_mergekit_safety", False):
        return

    @functools.wraps(original)
    def opener(cls: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(cls, path, *args, **kwargs)
        except Exception as error:
            if type(error).__name__ != "SafetensorError":
                raise
            raise ConfigError(
                f"{path}: unreadable safetensors file, truncated or corrupt ({error})"
            ) from error

    opener._mergekit_safety = True  # type: ignore[attr-defined]
    setattr(owner, name, classmethod(opener))


def _wrap_loader(module: Any) -> None:
    _named_shard(module.TensorLoader, "get")


def _wrap_index(module: Any) -> None:
    _named_shard(module.ShardedTensorIndex, "from_file")


def _wrap_card(module: Any) -> None:
    """``is_hf``: an existing local directory is a local model (assumption 16)."""

    def is_hf(original: Callable) -> Callable:
        @functools.wraps(original)
        def wrapper(path: str, *args: Any, **kwargs: Any) -> Any:
            import os

            if os.path.isdir(os.path.expanduser(str(path))):
                return False
            return original(path, *args, **kwargs)

        return wrapper

    _once(module, "is_hf", is_hf)


class _DropTorchDtypeDeprecation:
    """A logging filter: drop transformers' ``torch_dtype`` deprecation, keep everything else."""

    def filter(self, record: Any) -> bool:
        return "`torch_dtype` is deprecated" not in record.getMessage()


def _quiet_torch_dtype_warning(module: Any) -> None:
    logger = module.logger
    if not any(isinstance(f, _DropTorchDtypeDeprecation) for f in logger.filters):
        logger.addFilter(_DropTorchDtypeDeprecation())


# --- planning and scoring a recipe without running it ---------------------------------------------


def plan_tensors(
    config: Any, options: Any, *, arch_info: Any = None, out_config: Any = None
) -> list[PlannedTensor]:
    """The per-tensor merges mergekit plans for ``config``, in its order; nothing loads.

    Each carries the parameters resolved for its weight, exactly as ``mergekit-yaml`` would run it;
    the planner's hooks (roles, domains) run as in a real merge. The planner rewrites the config
    it is given, so it gets a copy; its writer tasks never run, so nothing is written.
    """
    import os

    from mergekit.architecture import get_architecture_info
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import _model_out_config
    from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask
    from mergekit.plan import MergePlanner

    if arch_info is None:
        arch_info = get_architecture_info(config, options)
        LoaderCache().setup(options=options)
    if out_config is None:
        out_config = _model_out_config(config, arch_info, trust_remote_code=False)
    planner = MergePlanner(
        config.model_copy(deep=True), arch_info, options=options, out_model_config=out_config
    )
    # plan_in_memory() fails in mergekit 0.1.5 (pydantic re-validates the generic Task), so take
    # the merge tasks from the to-disk plan, aimed at os.devnull (the output guard skips it).
    # Outside a merge, the plan's checks share a run of their own (headers read once).
    opened = runs.opened(runs.MergeRun(quiet=True)) if runs.current() is None else None
    with opened or contextlib.nullcontext():
        targets = planner.plan_to_disk(out_path=os.devnull)
    return [
        PlannedTensor.of(target.tensor_task)
        for target in targets
        if isinstance(getattr(target, "tensor_task", None), ExecuteMergeMethodTask)
    ]


def map_planned(
    tensors: Sequence[PlannedTensor],
    function: Callable[[PlannedTensor, Any], Any],
    *,
    device: str,
    quiet: bool,
    desc: str,
) -> list[Any]:
    """``function(tensor, group)`` for each planned tensor, its inputs loaded by mergekit.

    ``group`` is the method API's ``TensorGroup`` of the tensor's inputs, on ``device``; mergekit's
    executor loads them lazily and frees them after use. Results come back in ``tensors``' order.
    """
    import torch

    task_type = _applied_task_type()
    tasks = [task_type(merge=t.task, function=function) for t in tensors]
    order = {task: index for index, task in enumerate(tasks)}
    from mergekit.graph import Executor

    executor = Executor(tasks, math_device=torch.device(device))
    results = sorted(executor.run(quiet=quiet, desc=desc), key=lambda pair: order[pair[0]])
    return [value for _task, value in results]


@functools.cache
def _applied_task_type() -> type:
    from mergekit.graph import Task
    from mergekit.merge_methods import TensorEntry, TensorGroup, TensorMetadata
    from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

    class Applied(Task[Any]):
        """``function`` over a planned merge task's inputs, in place of the merge itself."""

        merge: ExecuteMergeMethodTask
        function: Callable[..., Any]

        def arguments(self) -> dict[str, Task]:
            return {"tensors": self.merge.gather_tensors}

        def uses_accelerator(self) -> bool:
            return True

        def execute(self, tensors: dict[Any, Any], **_kwargs: Any) -> Any:
            task = self.merge
            entries = tuple(
                TensorEntry(id=model, tensor=tensors[model], is_base=model == task.base_model)
                for model in task.model_order
                if model in tensors
            )
            group = TensorGroup(entries, TensorMetadata.from_weight_info(task.output_weight))
            return self.function(PlannedTensor.of(task), group)

    return Applied


# --- a merge in memory (a search's trials) -------------------------------------------------------


def architecture(config: Any, options: Any) -> tuple[Any, Any]:
    """(arch_info, out_config) of ``config`` as ``run_merge`` computes them (assumption 9)."""
    from mergekit.architecture import get_architecture_info
    from mergekit.io.tasks import LoaderCache
    from mergekit.merge import _model_out_config

    arch_info = get_architecture_info(config, options)
    LoaderCache().setup(options=options)
    out_config = _model_out_config(
        config, arch_info, trust_remote_code=bool(options.trust_remote_code)
    )
    return arch_info, out_config


def merge_in_memory(
    config: Any, options: Any, *, arch_info: Any, out_config: Any
) -> Iterator[tuple[str, Any]]:
    """(tensor name, merged tensor) for every tensor ``mergekit-yaml`` would write, in memory.

    The plan is mergekit's own (assumption 15), so the recipe-level hooks (checks, the ``top_k``
    ρ pass) and the per-tensor ones run as in a merge to disk; the caller opens the merge's run
    (:func:`mergekit_safety.core.runs.opened`). Nothing is written. Tensors are on the math device
    (``options.device``), cast to the output dtype.
    """
    import os

    import torch
    from mergekit.graph import Executor
    from mergekit.io.tasks import ReturnTensor, SaveTensor
    from mergekit.plan import MergePlanner

    planner = MergePlanner(
        config.model_copy(deep=True), arch_info, options=options, out_model_config=out_config
    )
    saves = [t for t in planner.plan_to_disk(out_path=os.devnull) if isinstance(t, SaveTensor)]
    returns = [
        ReturnTensor.model_construct(
            weight_info=_weight(save.tensor_name, save.optional),
            tensor_task=save.tensor_task,
            dtype=save.dtype,
        )
        for save in saves
    ]
    device = torch.device(options.device or "cpu")
    executor = Executor(returns, math_device=device, storage_device=device)
    for task, value in executor.run(quiet=True):
        if value is None:  # an optional tensor the inputs lack: mergekit writes none either
            continue
        yield task.weight_info.name, value


def _weight(name: str, optional: bool) -> Any:
    from mergekit.architecture import WeightInfo

    return WeightInfo(name=name, optional=optional)


# --- mergekit's lazy loader ----------------------------------------------------------------------


def setup_loader(options: Any) -> None:
    from mergekit.io.tasks import LoaderCache

    LoaderCache().setup(options=options)


def read_tensor(model: Any, tensor: PlannedTensor, *, device: str) -> Any:
    """One input tensor of ``model`` through mergekit's lazy loader (its aliases honoured)."""
    from mergekit.io.tasks import LoaderCache

    return (
        LoaderCache()
        .get(model)
        .get_tensor(tensor.name, device=device, aliases=list(tensor.aliases), raise_on_missing=True)
    )


def tensor_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in ``model``'s files, from their headers: nothing is loaded."""
    import os

    from mergekit.io.tasks import LoaderCache
    from safetensors import safe_open

    index = LoaderCache().get(model).index
    shapes: dict[str, tuple[int, ...]] = {}
    by_file: dict[str, list[str]] = {}
    for name, shard in index.tensor_paths.items():
        by_file.setdefault(shard, []).append(name)
    for shard, names in by_file.items():
        path = os.path.join(index.base_path, shard)
        if not shard.endswith(".safetensors"):
            return {}
        with safe_open(path, framework="pt") as handle:
            for name in names:
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def first_non_finite(model: Any) -> str | None:
    """The first tensor of ``model``'s safetensors files holding NaN or Inf (None: all finite,
    or not safetensors). One tensor in memory at a time, through the index mergekit loads by."""
    import math
    import os

    import torch
    from mergekit.io.tasks import LoaderCache
    from safetensors import safe_open

    index = LoaderCache().get(model).index
    for shard in sorted(set(index.tensor_paths.values())):
        if not shard.endswith(".safetensors"):
            return None
        with safe_open(os.path.join(index.base_path, shard), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_tensor(name)
                if tensor.is_floating_point() and tensor.numel():
                    low, high = torch.aminmax(tensor)
                    if not (math.isfinite(float(low)) and math.isfinite(float(high))):
                        return name
    return None


def converts_checkpoints(model: Any) -> bool:
    """Whether mergekit may build a weight ``model``'s files lack from others (transformers'
    checkpoint conversions for its model type, e.g. fused experts): then a missing name is no
    proof of a missing tensor."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    try:
        model_type = model.config(trust_remote_code=False).model_type
    except Exception:  # noqa: BLE001 - no readable config: mergekit says so itself
        return True
    return bool(get_checkpoint_conversion_mapping(model_type))


def same_matrices(first: Any, second: Any) -> bool | None:
    """Whether two models hold byte-identical 2-D tensors under every name they share.

    Read from the safetensors files by the byte ranges their headers give, stopping at the first
    difference (for two different models, within the first matrix or so); nothing is converted.
    None when either model is not in safetensors files or they share no 2-D tensor.
    """
    ranges = [_matrix_ranges(model) for model in (first, second)]
    if ranges[0] is None or ranges[1] is None:
        return None
    shared = [name for name in ranges[0] if name in ranges[1]]
    if not shared:
        return None
    for name in shared:
        (path_a, start_a, end_a), (path_b, start_b, end_b) = ranges[0][name], ranges[1][name]
        if end_a - start_a != end_b - start_b:
            return False
        with open(path_a, "rb") as a, open(path_b, "rb") as b:
            a.seek(start_a)
            b.seek(start_b)
            left = end_a - start_a
            while left:
                size = min(left, 1 << 24)
                if a.read(size) != b.read(size):
                    return False
                left -= size
    return True


def _matrix_ranges(model: Any) -> dict[str, tuple[str, int, int]] | None:
    """2-D tensor name -> (file, first byte, end byte) from ``model``'s safetensors headers."""
    import json
    import os
    import struct

    from mergekit.io.tasks import LoaderCache

    index = LoaderCache().get(model).index
    out: dict[str, tuple[str, int, int]] = {}
    headers: dict[str, tuple[dict, int]] = {}
    for name, shard in index.tensor_paths.items():
        if not shard.endswith(".safetensors"):
            return None
        path = os.path.join(index.base_path, shard)
        if path not in headers:
            with open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                headers[path] = (json.loads(handle.read(length)), 8 + length)
        header, data = headers[path]
        entry = header.get(name)
        if entry is not None and len(entry["shape"]) == 2:
            start, end = entry["data_offsets"]
            out[name] = (path, data + start, data + end)
    return out


@contextlib.contextmanager
def stand_in(models: Iterable[Any], for_model: Any) -> Iterator[None]:
    """Let mergekit index ``models`` by ``for_model``'s files while the block runs.

    Used for ``aligned+adapter`` inputs: a plain LoRA adds no tensor, so the aligned model's index
    names the same weights, and the planner need not merge the adapter to find them.
    """
    from mergekit.io.tasks import LoaderCache

    cache = LoaderCache()
    stand_ins = list(models)
    for model in stand_ins:
        cache.loaders[model] = cache.get(for_model)
    try:
        yield
    finally:  # the cache is process-wide: a later full merge must see the real merged model
        for model in stand_ins:
            cache.loaders.pop(model, None)


def merged_copy_name(reference: Any) -> str:
    """The directory name mergekit gives ``model+adapter`` merged into a cache (assumption 18:
    ``ModelReference.merged`` writes to ``{model._unique_id()}_{lora._unique_id()}``)."""
    return f"{reference.model._unique_id()}_{reference.lora._unique_id()}"


def forget_loaded(models: Iterable[Any]) -> None:
    """Drop ``models`` from mergekit's process-wide loader cache (their files are gone)."""
    from mergekit.io.tasks import LoaderCache

    for model in models:
        LoaderCache().loaders.pop(model, None)


def align_dtype(group: Any, dtype: Any) -> Any:
    """An API call's tensor group cast as mergekit casts it before a method runs."""
    from mergekit.merge_methods.dtype import align_dtype as align

    return align(group, dtype)


# --- a merge method's two private steps ---------------------------------------------------------


class PluginMethod(MergeMethod):
    """mergekit's ``MergeMethod`` with its private binding and execution steps under our names.

    ``MergeMethod.__call__`` (the Python API) binds through ``_bind_parameters`` and runs
    ``_execute``; mergekit's planner binds on its own and runs ``_execute`` too. Our methods
    override :meth:`bind` and :meth:`execute` instead, so these two private names appear here
    only (assumption 13).
    """

    def _bind_parameters(self, groups: Sequence[Any], parameters: Any) -> list[dict[str, Any]]:
        return self.bind(groups, parameters)

    def bind(self, groups: Sequence[Any], parameters: Any) -> list[dict[str, Any]]:
        """mergekit's binding of the Python API's parameters to each group."""
        return super()._bind_parameters(groups, parameters)

    def _execute(
        self, groups: Sequence[Any], parameters: list[dict[str, Any]], options: Any, *,
        input_dtypes: Sequence[Any], out_dtype: Any = None,
    ) -> tuple[Any, ...]:  # fmt: skip
        return self.execute(
            groups, parameters, options, input_dtypes=input_dtypes, out_dtype=out_dtype
        )

    def execute(
        self, groups: Sequence[Any], parameters: list[dict[str, Any]], options: Any, *,
        input_dtypes: Sequence[Any], out_dtype: Any = None,
    ) -> tuple[Any, ...]:  # fmt: skip
        """Merge bound groups (both entry points end here)."""
        raise NotImplementedError


def execute_method(
    method: Any, groups: Sequence[Any], parameters: list[dict[str, Any]], options: Any, *,
    input_dtypes: Sequence[Any], out_dtype: Any = None,
) -> tuple[Any, ...]:  # fmt: skip
    """Run another (stock-shaped) method's execution step on groups already bound."""
    return method._execute(
        groups, parameters, options, input_dtypes=input_dtypes, out_dtype=out_dtype
    )


# --- mergekit's, transformers' and torch's own texts for a user mistake ---------------------------


FOREIGN_PATTERNS: list[str] = []
"""The message texts matched (what ``tests/test_layers.py`` looks for outside the door)."""


def _message(pattern: str, template: str, kinds: tuple[type, ...] = (Exception,)):
    compiled = re.compile(pattern)
    FOREIGN_PATTERNS.append(pattern)

    def rule(error: BaseException) -> str | None:
        if not isinstance(error, kinds):
            return None
        match = compiled.search(str(error))
        return template.format(*match.groups()) if match else None

    return rule


FOREIGN_MESSAGES = (
    _message(r"Unimplemented merge method (\S+)", "unknown merge_method {0!r}", (RuntimeError,)),
    _message(
        r"Merge method requires a base input",
        "this merge method needs base_model (for the safety methods: the aligned model)",
        (ValueError,),
    ),
    _message(
        r"Repo id must be in the form .*?: '([^']*)'",
        "model not found: {0} (no such directory, and not a Hub id)",
    ),
    _message(
        r"Unrecognized model in (.*?)\. Should have a `model_type`",
        "not a model directory (no config.json with a model_type): {0}",
    ),
    _message(
        r"(\S+) does not appear to have a file named config\.json",
        "not a model directory (no config.json): {0}",
    ),
    _message(
        r"(?:outgoing traffic has been disabled|offline mode is enabled|"
        r"cannot find the requested files in the (?:disk )?cache)",
        "a model is neither a local directory nor in the Hub cache, and the Hub is offline",
    ),
    _message(
        r"Need to specify cache dir to merge adapters",
        "a `base+adapter` model needs --lora-merge-cache DIR (where the merged copy is kept)",
        (RuntimeError,),
    ),
    _message(
        r"(Torch not compiled with CUDA enabled|Found no NVIDIA driver|no CUDA GPUs are available)",
        "--cuda: no CUDA device here ({0}); run without --cuda",
    ),
    _message(
        r"Exactly one of 'models', 'slices', or 'modules' must be present",
        "the recipe needs exactly one of `models`, `slices` or `modules`",
        (RuntimeError,),
    ),
    _message(r"No output requested", "the recipe lists no models", (RuntimeError,)),
    _message(
        r'Unimplemented dtype "([^"]*)"',
        "dtype: unknown dtype {0!r} (use float32, float16 or bfloat16)",
        (RuntimeError,),
    ),
    _message(
        r"Unable to find model files at (.*)",
        "no weights in {0} (no *.safetensors or *.bin files): not a model directory",
        (RuntimeError,),
    ),
    _message(
        r"config file at '(.*?)' is not a valid JSON file",
        "{0} is not valid JSON: not a model directory",
        (OSError,),
    ),
    _message(
        r"Tensor size mismatch for (\S+): \[(.*?)\]\. Align vocabulary",
        "{0}: the models' vocabularies differ in size ({1}); add `tokenizer: {{source: base}}` "
        "to the recipe to align them",
        (ValueError,),
    ),
    _message(
        r"Tensor (\S+) required but not present in model (\S+)",
        "{1} has no tensor {0}: the models are not of one architecture, or a checkpoint is "
        "incomplete",
        (RuntimeError,),
    ),
    _message(
        r"size mismatch for base_model\.model\.(\S+?)\.(lora_[AB])\S*: copying a param with shape "
        r"torch\.Size\(\[(\d+), (\d+)\]\) from checkpoint, the shape in current model is "
        r"torch\.Size\(\[(\d+), (\d+)\]\)",
        "a LoRA adapter does not fit its base model: {0}.{1} is {2}×{3}, the base model needs "
        "{4}×{5} (the adapter was trained on another model)",
        (RuntimeError,),
    ),
)
"""Each a rule ``error -> our one line | None``, from the message text mergekit, transformers or
torch raise for a user mistake with a traceback (assumption 19)."""


def foreign_message(error: BaseException) -> str | None:
    """Our one line for a user mistake that mergekit, transformers or torch reported by text."""
    for rule in FOREIGN_MESSAGES:
        message = rule(error)
        if message:
            return message
    return None
