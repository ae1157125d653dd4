"""The Celery application. Configured from Settings by `configure()`; the service uses `send_run_job` to
enqueue without importing the tasks (and so without importing torch)."""

from __future__ import annotations

import logging

from celery import Celery
from kombu import Queue
from kombu.transport.redis import Channel as RedisChannel

from segserve import jobs as job_states
from segserve.config import Settings
from segserve.db import JobPriority, new_session

RUN_JOB = "segserve.run_job"
RUN_EVALUATION = "segserve.run_evaluation"
FINISH_EVALUATION = "segserve.finish_evaluation"
QUEUES = ("cpu", "gpu")
# Interaction sessions' prompts (#14) have a queue of their own, consumed by their own worker(s), so that a
# click never waits behind a long job. Not a job queue: jobs cannot be sent there.
INTERACT = "segserve.interact"
INTERACTIVE_QUEUE = "interactive"

# Message priorities on the Redis transport: kombu keeps one Redis list per priority step and per queue
# and its BRPOP names the lists lowest step first, so a LOWER number is served FIRST (the reverse of
# AMQP). Every message that is not a stat job (evaluation steps included) is routine: task_default_priority.
PRIORITY_STEPS = (0, 1)
BROKER_PRIORITY = {JobPriority.stat: 0, JobPriority.routine: 1}

app = Celery("segserve")
log = logging.getLogger(__name__)


def configure(celery_app: Celery, settings: Settings) -> Celery:
    """Apply the settings. Long tasks: late acks, re-delivery when a worker dies, no prefetching."""
    if not settings.redis_url:
        raise RuntimeError(
            "SEGSERVE_REDIS_URL is not set: start everything with `segserve up` (embedded broker) "
            "or point SEGSERVE_REDIS_URL at a Redis server"
        )
    if settings.visibility_timeout_s <= settings.task_time_limit_s:
        raise ValueError(
            f"visibility_timeout_s ({settings.visibility_timeout_s}) must exceed task_time_limit_s "
            f"({settings.task_time_limit_s}), or a long job would be delivered twice"
        )
    transport_options: dict[str, object] = {
        "visibility_timeout": settings.visibility_timeout_s,
        "priority_steps": list(PRIORITY_STEPS),
        # Stays "round_robin" on purpose: it orders QUEUES (cpu vs gpu) for a worker that consumes both;
        # priorities within and across queues come from priority_steps either way (see PRIORITY_STEPS).
        "queue_order_strategy": "round_robin",
    }
    if settings.broker_key_prefix:
        transport_options["global_keyprefix"] = settings.broker_key_prefix
    celery_app.conf.update(
        broker_url=settings.redis_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        task_soft_time_limit=settings.task_soft_time_limit_s,
        task_time_limit=settings.task_time_limit_s,
        # With late acks a running task holds its slot's one prefetched message, so a busy worker reserves
        # nothing more: a stat job published while it runs stays in the broker for the next free slot.
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(q) for q in (*QUEUES, INTERACTIVE_QUEUE)],
        task_default_queue="cpu",
        task_default_priority=BROKER_PRIORITY[JobPriority.routine],
    )
    return celery_app


def broker_lists(queue: str) -> list[str]:
    """The Redis lists (before the broker key prefix) that hold a queue's messages, one per priority step
    in kombu's naming, the first served first. For counting what waits in the broker."""
    return [queue if step == 0 else f"{queue}{RedisChannel.sep}{step}" for step in PRIORITY_STEPS]


def send_run_job(celery_app: Celery, job_id: str, queue: str, priority: str) -> None:
    """Publish a job id to a queue with its priority ("stat" or "routine"). Only ids travel through the
    broker, never data."""
    if queue not in QUEUES:
        raise ValueError(f"queue must be one of {QUEUES}, got {queue!r}")
    try:
        level = BROKER_PRIORITY[JobPriority(priority)]
    except ValueError:
        names = [p.value for p in JobPriority]
        raise ValueError(f"priority must be one of {names}, got {priority!r}") from None
    celery_app.send_task(RUN_JOB, args=[job_id], queue=queue, priority=level)


def send_evaluation_task(celery_app: Celery, task: str, evaluation_id: str, queue: str = "cpu") -> None:
    """Publish an evaluation step (RUN_EVALUATION or FINISH_EVALUATION) for an evaluation id."""
    if task not in (RUN_EVALUATION, FINISH_EVALUATION):
        raise ValueError(f"not an evaluation task: {task!r}")
    celery_app.send_task(task, args=[evaluation_id], queue=queue)


def publish_committed_job(
    celery_app: Celery, settings: Settings, job_id: str, queue: str, priority: str
) -> None:
    """Publish a job whose row is committed, then mark it enqueued. A broker failure is logged, not raised:
    the row stays queued and a worker's recovery pass publishes it again, so nothing accepted is lost."""
    try:
        send_run_job(celery_app, job_id, queue, priority)
    except Exception:
        log.warning("job %s: publishing failed; recovery will publish it", job_id, exc_info=True)
        return
    with new_session(settings.resolved_database_url) as session:
        job_states.mark_enqueued(session, job_id)


def send_interact(celery_app: Celery, session_id: str, request_id: str, expires_s: float) -> None:
    """Publish one prompt's work (a session id and the id of the reply list the API waits on) to the
    interactive queue. It expires with the API's wait: a click nobody waits for any more is not run."""
    celery_app.send_task(
        INTERACT, args=[session_id, request_id], queue=INTERACTIVE_QUEUE, expires=expires_s, priority=0
    )
