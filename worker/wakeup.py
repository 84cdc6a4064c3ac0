"""An arq worker that starts new jobs when told to, instead of at its next poll.

arq polls its queue every `poll_delay`, so a new job waits on average half of it: short delays
make jobs start sooner but keep an idle worker busy. This worker subscribes to the queue's
wake-up channel (`relight.jobs.queue.wake_channel`, published after every enqueue of a job that
is due now) and waits between polls on that signal, with the poll delay as the timeout. It also
polls at once when one of its own jobs finishes (room for another) and when the next deferred job
(a retry, a cron run) falls due, so the poll delay only bounds how late a lost message can make
a job. Claiming a job (arq's check that no other worker has it) is one Redis script instead of
four round trips.

With fair dispatch (the default), the claim also chooses which job: arq reads its queue in due
order, but a job that belongs to a tenant is traded for the next job of the tenant whose turn it
is (weighted turns, see `relight.jobs.queue`), so one tenant's backlog never holds another
tenant's job for long. Jobs of no tenant (webhook deliveries, sweeps) keep arq's order.

The scripts, and everything else that knows arq's private keys, live in
`relight.jobs.arq_format`. This class overrides arq Worker methods that are not public API
(`_poll_iteration`, `start_jobs`, `_release_sem_dec_counter_on_complete`, `close`) and relies on
its attributes (`sem`, `job_counter`, `tasks`, `run_job`, ...): tests/worker/test_arq_contract.py
pins the source of each of those arq methods and fails, naming this module, if an arq upgrade
changes one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any

from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relight.jobs import worker_heartbeat
from relight.jobs.arq_format import claim_job
from relight.jobs.queue import fair_keys, wake_channel
from relight.jobs.worker_heartbeat import WorkerBeat

logger = logging.getLogger(__name__)

# What a poll meets when Redis drops the worker's connection mid-command.
LOST_REDIS = (RedisConnectionError, RedisTimeoutError, WatchError)


class WakeableWorker(Worker):
    """arq's Worker, waiting between polls on the wake-up channel rather than sleeping."""

    def __init__(
        self, *args: Any, poll_delay: float = 0.5, fair_dispatch: bool = True, **kwargs: Any
    ) -> None:
        # arq's own poll loop sleeps `poll_delay` after each iteration; this class does the
        # waiting itself (in `_poll_iteration`), so arq's loop must not sleep on top of it.
        super().__init__(*args, poll_delay=0, **kwargs)
        self.wake_timeout_s = float(poll_delay)
        self.fair_dispatch = fair_dispatch
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        # Its heartbeat (`relight.jobs.worker_heartbeat`), for the operators' page.
        self.worker_id = worker_heartbeat.new_worker_id()
        self.started_at = time.time()
        self._heartbeat: asyncio.Task[None] | None = None

    async def _poll_iteration(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat(), name="relight-heartbeat")
        if self._listener is None and not self.burst:
            await self._start_listener()
        # Cleared before reading the queue: a job enqueued while we read it sets the event
        # again, so the wait below returns at once and the next iteration sees the job.
        self._wake.clear()
        try:
            await super()._poll_iteration()
            timeout = await self._time_to_next_poll()
        except LOST_REDIS as exc:
            # A connection Redis dropped (a restart, a failover) under a command that cannot
            # be retried on its own: a WATCH in arq's enqueue of a cron run, say. arq would end
            # the worker; the next poll reconnects instead (a cron run whose enqueue failed
            # waits for its next time: the sweep runs every few seconds).
            logger.warning("poll failed on a dropped Redis connection (%r); polling again", exc)
            timeout = self.wake_timeout_s
        if timeout > 0:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that arrives as the event is set, and the worker would never stop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's `start_jobs`, with the claim of each job in one script (`arq_format.claim_job`,
        which with fair dispatch may start another tenant's job in place of the one given)."""
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            try:
                claimed = await self._claim(job_id_b.decode())
            except BaseException:
                self.job_counter -= 1
                self.sem.release()
                raise
            if claimed is None:
                # Running elsewhere, finished, or deferred again by another worker.
                self.job_counter -= 1
                self.sem.release()
                continue
            job_id, score = claimed
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _claim(self, candidate: str) -> tuple[str, int] | None:
        """Mark a due job in progress: (its id, its score), or None when none could be had."""
        fair = fair_keys(self.queue_name) if self.fair_dispatch else None
        return await claim_job(
            self.pool, self.queue_name, candidate, self.in_progress_timeout_s, fair
        )

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        # Room for another job (below worker_concurrency): look in arq's queue now, not at the
        # next poll.
        self._wake.set()

    async def _time_to_next_poll(self) -> float:
        """The poll delay, shortened to when the next deferred job or cron run is due."""
        timeout = self.wake_timeout_s
        if timeout <= 0 or self.burst:
            return timeout
        now_ms = time.time() * 1000
        try:
            due = await self.pool.zrangebyscore(
                self.queue_name, min=f"({now_ms:.0f}", max="+inf", start=0, num=1, withscores=True
            )
        except (RedisError, OSError):
            return timeout
        if due:
            timeout = min(timeout, max(0.0, (due[0][1] - now_ms) / 1000))
        for cron_job in self.cron_jobs:
            if cron_job.next_run is not None:
                # arq enqueues a cron run up to one second ahead (its window with no poll delay).
                ahead = (cron_job.next_run - datetime.now(tz=self.timezone)).total_seconds()
                timeout = min(timeout, max(0.0, ahead - 0.5))
        return timeout

    async def _start_listener(self) -> None:
        subscribed = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(subscribed), name="relight-wakeup")
        # Subscribed before the first read of the queue, so no wake-up falls in between.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await subscribed.wait()

    async def _listen(self, subscribed: asyncio.Event) -> None:
        channel = wake_channel(self.queue_name)
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    subscribed.set()
                    # Anything published while we were not subscribed was missed: poll now.
                    self._wake.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                logger.warning("wake-up subscription lost; polling until it is back", exc_info=True)
                await asyncio.sleep(1)

    def heartbeat(self) -> WorkerBeat:
        """What this worker says about itself now."""
        host, pid, _ = self.worker_id.rsplit(":", 2)
        return WorkerBeat(
            id=self.worker_id,
            host=host,
            pid=int(pid),
            queue=self.queue_name,
            started_at=self.started_at,
            last_seen=time.time(),
            tasks_running=self.job_counter,
            max_tasks=self.max_jobs,
            tasks_done=self.jobs_complete + self.jobs_failed,
        )

    async def _beat(self) -> None:
        while True:
            try:
                await worker_heartbeat.publish_beat(self.pool, self.heartbeat())
            except (RedisError, OSError):
                logger.warning("could not write this worker's heartbeat", exc_info=True)
            await asyncio.sleep(worker_heartbeat.BEAT_INTERVAL_S)

    async def _stop_heartbeat(self) -> None:
        if self._heartbeat is None:
            return
        self._heartbeat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._heartbeat
        self._heartbeat = None
        # Gone on purpose: off the page at once rather than marked stale.
        with contextlib.suppress(RedisError, OSError):
            await worker_heartbeat.withdraw(self.pool, self.queue_name, self.worker_id)

    async def close(self) -> None:
        await self._stop_heartbeat()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if not self._handle_signals and self.tasks:
            # arq's close cancels the jobs still running (when it does not handle signals
            # itself) and then gathers them, so a job cancelled there (a sweep that was
            # running) would raise out of close and skip the shutdown hook. Cancel and collect
            # them here first; the shutdown and the pool's close then always run.
            for task in self.tasks.values():
                task.cancel()
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            self.tasks.clear()
        await super().close()
