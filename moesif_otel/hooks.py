"""User hooks, made failsafe and bounded in time.

A hook that raises or returns the wrong type must never change what the app answers nor stop the
event: its field is left out and the problem is logged once per hook and cause (WARNING on the
``moesif_otel`` logger), not once per request.

A hook that is slow or never returns must not hold the app either. The hooks of one request share
one time budget (``HOOK_TIMEOUT``, see :class:`HookRun`); past it the event is recorded without the
values still missing. Async hooks are awaited on the app's loop and cancelled at the deadline (one
that swallows the cancellation is closed and abandoned). A sync hook's first calls run in a small
dedicated thread pool, timed; a fast one then runs inline, because a thread hop costs the loop far
more than a fast hook (docs/configuration.md has the numbers), and one whose calls turn slow goes
back to the pool for good. A request's sync hooks in the pool share one hop.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from moesif_otel.logonce import LogOnce
from moesif_otel.types import HookKind

logger = logging.getLogger("moesif_otel")

_MISSING = object()
# A sync hook whose calls average more than this (seconds, moving average) leaves the event loop.
INLINE_AVERAGE = 0.002
_AVERAGE_WEIGHT = 0.2
# A sync hook's first calls run off the loop, timed; it comes onto the loop if they were fast.
_LEARNING_CALLS = 16
# Sync hook calls running in threads at once, per event loop; the app's own thread pool is untouched.
HOOK_THREADS = 8
# Hook jobs in threads or waiting for one, per process, including calls that outlived their budget
# and still run: beyond it the event goes without the sync hooks' values (bounds threads and memory).
MAX_HOOK_JOBS = 32


def _text(value: Any) -> Any:
    """Ids may come back as ints from user code; anything else that is not text is wrong."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _MISSING


def _mapping(value: Any) -> Any:
    return value if isinstance(value, dict) else _MISSING


def _flag(value: Any) -> Any:
    return bool(value) if isinstance(value, (bool, int)) else _MISSING


# How each kind of hook result is checked: returns the value to use, or _MISSING when wrong.
CHECKS: dict[HookKind, Callable[[Any], Any]] = {"text": _text, "mapping": _mapping, "flag": _flag}


class HookTimeout(TimeoutError):
    """An awaitable hook did not finish within its time budget."""


class Hook:
    """One user function, called failsafe; sync or ``async def``."""

    __slots__ = (
        "_average",
        "_check",
        "_learning",
        "_warnings",
        "expected",
        "fn",
        "is_async",
        "name",
        "offloop",
    )

    def __init__(self, name: str, fn: Callable[..., Any], expected: HookKind) -> None:
        self.name = name
        self.fn = fn
        self.expected = expected
        self._check = CHECKS[expected]
        self._warnings = LogOnce(logger)
        self.is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004  # an object with an async __call__
        )
        # A sync hook starts off the loop for its first calls, so that a hook slow from the start
        # never blocks the loop; fast ones then run inline, until their calls turn slow for good.
        self.offloop = not self.is_async
        self._learning = 0 if self.is_async else _LEARNING_CALLS
        self._average = 0.0

    def warn_once(self, cause: str, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log ``message`` the first time this hook shows ``cause``; later occurrences are silent."""
        self._warnings.warning(cause, message, *args, exc_info=exc_info)

    def _result(self, value: Any) -> Any:
        if value is None:
            return None
        if type(value) is str and self.expected == "text":
            return value or None
        checked = self._check(value)
        if checked is _MISSING:
            self.warn_once(
                f"type:{type(value).__name__}",
                "moesif_otel: %s returned %s, expected %s; the field is left out (logged once)",
                self.name,
                type(value).__name__,
                self.expected,
            )
            return None
        return checked

    def _failed(self, exc: BaseException) -> None:
        self.warn_once(
            f"raise:{type(exc).__name__}",
            "moesif_otel: %s raised %s: %s; the field is left out (logged once)",
            self.name,
            type(exc).__name__,
            exc,
            exc_info=True,
        )

    def timed_out(self, timeout: float | None) -> None:
        self.warn_once(
            "timeout",
            "moesif_otel: %s did not return within HOOK_TIMEOUT (%s s); the event is recorded "
            "without its value and without the hooks not yet called (logged once)",
            self.name,
            timeout,
        )

    def _observe(self, seconds: float) -> None:
        """A call's duration: ends the first calls' trial, or moves a hook that turned slow."""
        self._average += (seconds - self._average) * _AVERAGE_WEIGHT
        if self._learning:
            self._learning -= 1
            if not self._learning and self._average <= INLINE_AVERAGE:
                self.offloop = False
            return
        if self._average > INLINE_AVERAGE and not self.offloop:
            self.offloop = True
            logger.info(
                "moesif_otel: %s is slow (%.1f ms); it runs off the event loop from now on",
                self.name,
                seconds * 1000,
            )

    def call_inline(self, *args: Any) -> Any:
        """A sync hook on the loop, timed. An awaitable result comes back as :class:`Pending` for
        the caller to await within its budget (and the hook counts as async from now on)."""
        try:
            start = time.perf_counter()
            value = self.fn(*args)
            self._observe(time.perf_counter() - start)
        except Exception as exc:
            self._failed(exc)
            return None
        if type(value) is not str and inspect.isawaitable(value):
            self.is_async = True
            return Pending(value)
        return self._result(value)

    async def settle(self, awaitable: Any, timeout: float | None) -> Any:
        """The checked result of an awaitable this hook returned, or TIMED_OUT."""
        try:
            value = await _bounded(awaitable, timeout)
        except Exception as exc:
            self._failed(exc)
            return None
        return value if value is TIMED_OUT else self._result(value)

    async def acall(self, *args: Any, timeout: float | None = None) -> Any:
        """Call on the event loop: a sync hook inline (timed), an awaitable for at most ``timeout``
        seconds; past it, :data:`TIMED_OUT` (the caller logs it)."""
        try:
            if self.is_async:
                value = self.fn(*args)
            else:
                start = time.perf_counter()
                value = self.fn(*args)
                self._observe(time.perf_counter() - start)
            if type(value) is not str and inspect.isawaitable(value):
                return await self.settle(value, timeout)
        except Exception as exc:
            self._failed(exc)
            return None
        return self._result(value)

    def call(self, *args: Any, timeout: float | None = None) -> Any:
        """Call from a plain thread; an async hook runs on this thread's private loop, for at most
        ``timeout`` seconds (then :data:`TIMED_OUT`; the caller logs it)."""
        try:
            start = time.perf_counter()
            value = self.fn(*args)
            if self._learning:
                self._observe(time.perf_counter() - start)
            if inspect.isawaitable(value):
                value = run_awaitable(value, timeout)
        except HookTimeout:
            return TIMED_OUT
        except Exception as exc:
            self._failed(exc)
            return None
        return self._result(value)


TIMED_OUT: Any = object()


class Pending:
    """An awaitable a sync hook returned, still to be awaited."""

    __slots__ = ("awaitable",)

    def __init__(self, awaitable: Any) -> None:
        self.awaitable = awaitable


class _Refused(Exception):
    """A hook went on waiting after it was given the cancellation at a checkpoint."""


class Abandonable:
    """Awaits a hook's awaitable transparently, except that a hook which swallows a cancellation
    and waits again is closed and left behind: cancelling it then cannot hang the caller.

    asyncio throws the cancellation in (seen here); trio sends it as a value that the hook's own
    trap unwraps (not seen here), so ``scope`` tells that it was due: the hook gets one
    checkpoint to act on it, and is abandoned at the next one (raising :class:`_Refused`).
    """

    __slots__ = ("_awaitable", "_scope")

    def __init__(self, awaitable: Any, scope: anyio.CancelScope) -> None:
        self._awaitable = awaitable
        self._scope = scope

    def __await__(self) -> Generator[Any, Any, Any]:
        it = self._awaitable.__await__()
        cancelled = anyio.get_cancelled_exc_class()
        scope = self._scope
        step, arg, refused, checkpoints = it.send, None, None, 0
        while True:
            try:
                yielded = step(arg)
            except StopIteration as stop:
                return stop.value
            if refused is not None:  # it caught the cancellation and awaits again
                _close(it)
                raise refused
            if scope.cancel_called:
                checkpoints += 1
                if checkpoints > 1:
                    _close(it)
                    raise _Refused
            try:
                step, arg = it.send, (yield yielded)
            except cancelled as exc:
                step, arg, refused = it.throw, exc, exc
            except BaseException as exc:
                step, arg = it.throw, exc


async def _bounded(awaitable: Any, timeout: float | None) -> Any:
    """``awaitable``'s result, or TIMED_OUT after ``timeout`` seconds."""
    with anyio.move_on_after(timeout) as scope:
        try:
            return await Abandonable(awaitable, scope)
        except _Refused:
            pass
    return TIMED_OUT


def _close(it: Any) -> None:
    try:
        close = getattr(it, "close", None)
        if close is not None:
            close()
    except Exception:  # "coroutine ignored GeneratorExit", or its finally failed: it is abandoned
        pass


_thread_loops = threading.local()


def run_awaitable(awaitable: Any, timeout: float | None = None) -> Any:
    """Run an awaitable to completion on a loop owned by the calling (non-async) thread; past
    ``timeout`` seconds it is cancelled (or abandoned) and :class:`HookTimeout` raised."""
    loop = getattr(_thread_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_loops.loop = loop

    value = loop.run_until_complete(_bounded(awaitable, timeout))
    if value is TIMED_OUT:
        raise HookTimeout(f"did not finish within {timeout} s")
    return value


class Job:
    """moesif_otel's own work on a hook's result (serialising big metadata): it runs where the
    request's sync hooks run, off the event loop."""

    __slots__ = ("fn",)
    is_async = False
    offloop = True
    name = "moesif_otel"

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def call(self, *args: Any, timeout: float | None = None) -> Any:
        return self.fn()

    call_inline = call


Step = Generator["Hook | Job", Any, Any]


class _Done:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_ABANDONED = object()


class _Slot:
    """One hook job's place in the process-wide bound; freed when its thread is really done."""

    __slots__ = ("state",)
    _lock = threading.Lock()
    pending = 0

    def __init__(self) -> None:
        self.state = "waiting"

    @classmethod
    def take(cls) -> _Slot | None:
        with cls._lock:
            if cls.pending >= MAX_HOOK_JOBS:
                return None
            cls.pending += 1
        return cls()

    def start(self) -> bool:
        with self._lock:
            if self.state != "waiting":
                return False
            self.state = "running"
            return True

    def give_up(self) -> None:
        """The caller stopped waiting: free the slot now unless a thread is running the job."""
        with self._lock:
            if self.state == "waiting":
                self.state = "given-up"
                _Slot.pending -= 1

    def finish(self) -> None:
        with self._lock:
            self.state = "done"
            _Slot.pending -= 1


_limiter: RunVar[anyio.CapacityLimiter] = RunVar("moesif_otel.hook_limiter")
_pool_warnings = LogOnce(logger)
_abandon = (
    {"abandon_on_cancel": True}
    if "abandon_on_cancel" in inspect.signature(anyio.to_thread.run_sync).parameters
    else {"cancellable": True}  # anyio < 4.1
)


def _hook_limiter() -> anyio.CapacityLimiter:
    try:
        return _limiter.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(HOOK_THREADS)
        _limiter.set(limiter)
        return limiter


class HookRun:
    """The hooks of one request (or phase: governance identifies before the app) under one time
    budget: ``timeout`` seconds for all of them together, waiting for a hook thread included.

    The order and logic of the hooks is a generator (``make_steps``) that yields each hook and
    receives its value; this class decides where each runs. Once the budget is spent, hooks not
    yet answered are left out (``None``) and the generator is replayed with the values that came
    back in time, so the event is recorded at the deadline even while a sync hook still runs.

    Hooks run inside the app's last ``send``, in the app's task, which the app may cancel as
    soon as the response is complete (Starlette's StreamingResponse does once the client is
    done): every await here is shielded from that and bounded by the budget instead.
    """

    __slots__ = ("args", "deadline", "expired", "running", "timeout", "values")

    def __init__(self, args: tuple[Any, ...], timeout: float) -> None:
        self.args = args
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.values: dict[Any, Any] = {}
        self.running: Hook | Job | None = None
        self.expired = False

    async def drive(self, make_steps: Callable[[], Step]) -> Any:
        steps = make_steps()
        try:
            job = next(steps)
            while True:
                if self.expired:
                    value = job.call() if isinstance(job, Job) else None
                elif not job.offloop:  # a fast sync hook: inline, no task switch (the common case)
                    value = job.call_inline(*self.args)
                    if type(value) is Pending:
                        value = await self._on_loop(job, value.awaitable)
                elif job.is_async:
                    value = await self._on_loop(job)
                else:
                    outcome = await self._off_loop(steps, job)
                    if outcome is _ABANDONED:  # a thread still holds the generator
                        return self._replay(make_steps)
                    if isinstance(outcome, _Done):
                        return outcome.value
                    if type(outcome) is tuple:  # a sync hook returned an awaitable: await it here
                        job, pending = outcome
                        value = await self._on_loop(job, pending.awaitable)
                    else:
                        job = outcome  # an async hook: back on the loop
                        continue
                job = steps.send(value)
        except StopIteration as stop:
            return stop.value

    async def _on_loop(self, job: Hook | Job, awaitable: Any = None) -> Any:
        """An async hook (or the awaitable a sync one returned) within what is left of the budget."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.expired = True
            return None
        self.running = job
        with anyio.CancelScope(shield=True):  # see the class docstring
            if awaitable is not None:
                value = await job.settle(awaitable, remaining)  # type: ignore[union-attr]
            else:
                value = await job.acall(*self.args, timeout=remaining)  # type: ignore[union-attr]
        if value is TIMED_OUT:
            self.expired = True
            job.timed_out(self.timeout)  # type: ignore[union-attr]
            return None
        return value

    async def _off_loop(self, steps: Step, job: Hook | Job) -> Any:
        remaining = self.deadline - time.monotonic()
        slot = _Slot.take() if remaining > 0 else None
        if slot is None:
            if remaining > 0:
                _pool_warnings.warning(
                    "full",
                    "moesif_otel: %d hook calls are running or waiting in threads (hooks that do "
                    "not return?); events go without the values of sync hooks until some finish "
                    "(logged once)",
                    MAX_HOOK_JOBS,
                )
            self.expired = True
            return _ABANDONED
        self.running = None
        outcome: Any = _ABANDONED
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(remaining):  # see the class doc
                context = contextvars.copy_context()  # the request's context variables, for the hooks
                outcome = await anyio.to_thread.run_sync(
                    context.run, self._in_thread, steps, job, slot, limiter=_hook_limiter(), **_abandon
                )
        finally:
            slot.give_up()
        if outcome is _ABANDONED:
            self.expired = True
            running = self.running
            if isinstance(running, Hook):
                running.timed_out(self.timeout)
            elif running is None:
                _pool_warnings.warning(
                    "wait",
                    "moesif_otel: no hook thread came free within HOOK_TIMEOUT (%s s); the event is "
                    "recorded without the values of its sync hooks (logged once)",
                    self.timeout,
                )
        return outcome

    def _in_thread(self, steps: Step, job: Hook | Job, slot: _Slot) -> Any:
        """Every sync hook of the request, in order, until an async one (or an awaitable a sync
        one returned, which goes back to the loop with it) or the end."""
        if not slot.start():
            return _ABANDONED
        try:
            while True:
                if self.expired:
                    return _ABANDONED
                self.running = job
                value = job.call_inline(*self.args)
                if type(value) is Pending:  # awaited on the app's loop, where it was meant to run
                    return job, value
                self.values[job] = value
                try:
                    job = steps.send(value)
                except StopIteration as stop:
                    return _Done(stop.value)
                if job.is_async:
                    return job
        finally:
            slot.finish()

    def run(self, make_steps: Callable[[], Step]) -> Any:
        """The same steps from a plain thread (a blocking client call, ``requests`` or
        ``httpx.Client``): every hook here, in order, within the budget. A sync hook cannot be
        interrupted; once the budget is spent, the hooks not yet called are left out."""
        return answer_steps(make_steps(), self._call_here)

    def _call_here(self, hook: Hook) -> Any:
        if self.expired or (remaining := self.deadline - time.monotonic()) <= 0:
            self.expired = True
            return None
        value = call_hook(hook, *self.args, timeout=remaining)
        if value is TIMED_OUT:
            self.expired = True
            hook.timed_out(self.timeout)
            return None
        return value

    def _replay(self, make_steps: Callable[[], Step]) -> Any:
        """The steps again, answered from the values that came back in time; no hook is called."""
        return answer_steps(make_steps(), dict(self.values).get)


_side_lock = threading.Lock()
_side: ThreadPoolExecutor | None = None


def call_hook(hook: Hook, *args: Any, timeout: float | None = None) -> Any:
    """``Hook.call``, except for an async hook on a thread that runs an event loop.

    That happens when a blocking ``requests`` call sits in an ``async def`` endpoint: the loop is
    busy in the call, so the hook cannot run on it, nor on a second loop in the same thread.
    It runs on one side thread (with its own loop and the caller's context) while the caller waits.
    An awaitable hook gets at most ``timeout`` seconds; past it, :data:`TIMED_OUT`.
    """
    if not hook.is_async:
        return hook.call(*args, timeout=timeout)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return hook.call(*args, timeout=timeout)
    global _side
    with _side_lock:
        if _side is None:
            _side = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moesif-otel-hooks")
        side = _side
    context = contextvars.copy_context()
    return side.submit(context.run, lambda: hook.call(*args, timeout=timeout)).result()


def answer_steps(steps: Step, answer: Callable[[Hook], Any]) -> Any:
    """Steps driven synchronously: each hook answered by ``answer``, each job run here; their result."""
    try:
        job = next(steps)
        while True:
            job = steps.send(job.call() if isinstance(job, Job) else answer(job))
    except StopIteration as stop:
        return stop.value


def _no_value(hook: Hook) -> None:
    return None


def run_steps_inline(steps: Step) -> Any:
    """Steps that yield no hook (none is configured): their result, synchronously."""
    return answer_steps(steps, _no_value)


def make_hook(name: str, fn: Callable[..., Any] | None, expected: HookKind) -> Hook | None:
    return Hook(name, fn, expected) if fn is not None else None
