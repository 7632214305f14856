"""The backend's SQLite store: `/versions` lists runs in the order they were asked for."""

from railyard_ml.store import Store


def test_runs_list_in_submission_order_even_when_a_later_run_was_queued_before_the_first_started(tmp_path):
    store = Store(tmp_path)
    store.queue_run("p", "1700000000000001", "ANNOTATION_CREATED")
    store.queue_run("p", "1700000000000002", "ANNOTATION_CREATED")
    # the first run starts after the second was queued: its started_at is now the newest of the two
    store.start_run("p", "1700000000000001", "ANNOTATION_CREATED")
    assert [(run["job_id"], run["status"]) for run in store.runs("p")] == [
        ("1700000000000001", "running"), ("1700000000000002", "queued")]
    store.finish_run("p", "1700000000000001", version="0.1.0", error=None)
    store.start_run("p", "1700000000000002", "ANNOTATION_CREATED")
    assert [(run["job_id"], run["status"]) for run in store.runs("p")] == [
        ("1700000000000001", "ok"), ("1700000000000002", "running")]


def test_a_model_directory_that_cannot_be_locked_is_served_unguarded(tmp_path, monkeypatch, caplog):
    """A file system without locks (ENOLCK on some network mounts) must not keep the backend from starting: it
    serves, and says a second process would not be refused."""
    import errno
    import logging

    from railyard_ml import store

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(store.fcntl, "flock", no_locks)
    caplog.set_level(logging.WARNING, logger="railyard_ml.store")
    release = store.claim_model_dir(tmp_path)
    release()
    assert "cannot be locked" in caplog.text and "No locks available" in caplog.text
    assert tmp_path.resolve() not in store._CLAIMS
