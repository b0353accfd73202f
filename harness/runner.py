"""The program runner: runs a Pulumi program as `pulumi up` does (its directory, config, parallelism)."""
from __future__ import annotations

import asyncio
import contextlib
import os
import runpy
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterator

from harness import mocks
from harness.result import ApplyError, Skipped
from harness.secrets import config_string

if TYPE_CHECKING:
    from harness.engine import Run


def run_program(program_dir: str, project: str, stack: str, config: dict[str, object],
                secret_keys: list[str], run: Any, parallel: int, preview: bool = False) -> dict:
    """Run __main__.py under the live mocks; returns the stack exports (secret markers kept).
    ``preview``: as under `pulumi preview` (``pulumi.runtime.is_dry_run()`` is True); ``run``
    registers each resource (an apply's ``engine.Run``, or harness/preview.py's read-only one)."""
    with _program_context(program_dir), _event_loop(parallel):
        live = mocks.LiveMocks(run)
        mocks.install(live, project, stack, {k: config_string(v) for k, v in config.items()}, list(secret_keys),
                      preview, monitor=mocks.LiveMonitor(live))
        try:
            mocks.run(lambda: runpy.run_path(program_dir, run_name="__main__"))
        except BaseException as exc:
            raise _as_apply_error(exc, run) from exc
        if run.first_error is not None:
            raise run.first_error
        return mocks.stack_exports()


def _as_apply_error(exc: BaseException, run: Run) -> BaseException:
    if run.first_error is not None:
        return run.first_error
    if isinstance(exc, (ApplyError, KeyboardInterrupt, SystemExit)):
        return exc
    return run.error(f"program failed: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _program_context(program_dir: str) -> Iterator[None]:
    """What `pulumi up` gives a program: its directory as cwd and import root; reset after."""
    cwd, loaded = os.getcwd(), set(sys.modules)
    sys.path.insert(0, program_dir)
    os.chdir(program_dir)
    try:
        yield
    finally:
        os.chdir(cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(program_dir)
        _forget_modules(program_dir, keep=loaded)  # the next apply may run a changed program
        mocks.reset()  # no secret config left in the process


def _forget_modules(program_dir: str, keep: set[str]) -> None:
    # Only what this run imported: the caller's own imports from the same tree
    # (this harness, when the program is the repository) stay as they are.
    prefix = program_dir + os.sep
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        real = os.path.realpath(path)
        # A virtualenv inside the program directory holds libraries, not the program: SDK
        # packages register themselves globally once and must stay loaded.
        if name not in keep and real.startswith(prefix) and f"{os.sep}site-packages{os.sep}" not in real:
            del sys.modules[name]


@contextlib.contextmanager
def _event_loop(parallel: int) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh loop whose default executor (where new_resource runs) has `parallel` threads."""
    worker_loops: list[asyncio.AbstractEventLoop] = []

    def give_thread_a_loop() -> None:  # the SDK's monitor code needs one per thread
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        worker_loops.append(loop)

    executor = ThreadPoolExecutor(parallel, thread_name_prefix="harness", initializer=give_thread_a_loop)
    loop = asyncio.new_event_loop()
    loop.set_default_executor(executor)
    loop.set_exception_handler(_quiet_about_reported_errors)
    asyncio.set_event_loop(loop)
    try:
        yield loop
    finally:
        executor.shutdown(wait=True)
        _cancel_leftovers(loop)
        for worker_loop in worker_loops:
            worker_loop.close()
        loop.close()
        asyncio.set_event_loop(None)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    # After a failure the SDK leaves registrations waiting (on the failed
    # resource, or on executor results it never collected); end them here
    # rather than have asyncio report "Task was destroyed but it is pending".
    leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in leftovers:
        task.cancel()
    if leftovers:
        loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))


def _quiet_about_reported_errors(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    # The SDK leaves the failed resource's output futures unread; apply() has
    # already raised that error, so asyncio's "never retrieved" report is noise.
    if isinstance(context.get("exception"), (ApplyError, Skipped)):
        return
    loop.default_exception_handler(context)
