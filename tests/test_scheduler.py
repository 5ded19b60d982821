"""The fallback sweep is scheduled once, under a stable id, however many schedulers start."""

from rq_scheduler import Scheduler

from app.engine_cli import SWEEP_JOB_ID, register_periodic_sweep
from app.queues import DEFAULT_QUEUE, queue


def _scheduler(app):
    return Scheduler(queue_name=DEFAULT_QUEUE, connection=app.extensions["redis"], interval=1)


def test_restarting_the_scheduler_never_duplicates_the_sweep(app):
    with app.app_context():
        assert register_periodic_sweep(_scheduler(app), 300) is True
        assert register_periodic_sweep(_scheduler(app), 300) is False  # a restart, or a second copy
        jobs = [job for job in _scheduler(app).get_jobs() if job.id == SWEEP_JOB_ID]
        assert len(jobs) == 1 and jobs[0].meta["interval"] == 300


def test_a_changed_interval_replaces_the_schedule(app):
    with app.app_context():
        register_periodic_sweep(_scheduler(app), 300)
        assert register_periodic_sweep(_scheduler(app), 60) is True
        jobs = [job for job in _scheduler(app).get_jobs() if job.id == SWEEP_JOB_ID]
        assert len(jobs) == 1 and jobs[0].meta["interval"] == 60


def test_two_schedulers_enqueue_a_due_sweep_once(app):
    with app.app_context():
        register_periodic_sweep(_scheduler(app), 300)
        _scheduler(app).run(burst=True)
        _scheduler(app).run(burst=True)
        assert queue(DEFAULT_QUEUE).get_job_ids() == [SWEEP_JOB_ID]


def test_the_scheduled_sweep_runs_on_a_worker_and_records_its_result(app):
    import json

    from tests.engine_helpers import drain_queues

    with app.app_context():
        register_periodic_sweep(_scheduler(app), 300)
        _scheduler(app).run(burst=True)
    drain_queues(app)
    last = json.loads(app.extensions["redis"].get("sweep:last"))
    assert last["enqueued"] == 0 and "at" in last and "duration_ms" in last


def test_the_scheduler_puts_the_sweep_back_after_redis_lost_it(app):
    from app.engine_cli import engine_scheduler

    with app.app_context():
        scheduler = engine_scheduler(app.extensions["redis"], 300, poll_interval=1)
        register_periodic_sweep(scheduler, 300)
        app.extensions["redis"].flushdb()  # Redis restarted without persistence
        engine_scheduler(app.extensions["redis"], 300, poll_interval=1).run(burst=True)
        assert SWEEP_JOB_ID in _scheduler(app)
        assert queue(DEFAULT_QUEUE).get_job_ids() == [SWEEP_JOB_ID]  # and it is due at once


def test_a_worker_registers_again_after_redis_lost_its_data(app):
    from rq import Worker

    from app.engine_cli import engine_worker
    from app.queues import CAPTURE_QUEUE

    redis = app.extensions["redis"]
    with app.app_context():
        worker = engine_worker([queue(CAPTURE_QUEUE)], redis)
        worker.register_birth()
        assert [w.name for w in Worker.all(connection=redis)] == [worker.name]
        redis.flushdb()  # a Redis restart without persistence
        assert Worker.all(connection=redis) == []  # what the dashboard's "workers alive" reads
        worker.heartbeat()
        assert [w.name for w in Worker.all(connection=redis)] == [worker.name]
        worker.register_death()
