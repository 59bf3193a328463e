"""Tasks with one owner: a session's or a call's background work, never fire-and-forget.

Every task a Session, a WebRTC call or a phone call starts goes into its :class:`OwnedTasks`:
named after the owner (so a stuck one is identifiable), a failure is logged with its traceback and
handed to the owner (who reports it or ends the call), and ``cancel_all`` cancels and awaits them
all when the owner ends, so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class OwnedTasks:
    def __init__(self, owner: str, on_failure: Callable[[asyncio.Task[Any], BaseException], None]) -> None:
        self.owner = owner
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str,
              context: contextvars.Context | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}:{name}", context=context)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s: task %s failed", self.owner, task.get_name(), exc_info=exc)
            self._on_failure(task, exc)

    async def cancel_all(self, grace_s: float | None = None) -> None:
        """Cancel every task and wait for it to finish (a task still running ``grace_s`` seconds
        after its cancellation is logged and left: a worker thread can only be asked to stop)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            log.error("%s: task %s did not stop within %s s", self.owner, task.get_name(), grace_s)
