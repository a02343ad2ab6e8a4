"""The lifecycle decisions after ``plan()``, as scripted histories: pure, milliseconds."""

from __future__ import annotations

from runner import lifecycle


def test_backoff_doubles_up_to_a_cap() -> None:
    delays = [lifecycle.backoff(n, base=1.0, cap=60.0) for n in range(1, 9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_server_that_keeps_crashing_soon_after_its_start_backs_off() -> None:
    attempts, now, delays = 0, 0.0, []
    for _ in range(5):  # each restart dies 3 s after its spawn
        spawned = now
        now += 3.0
        retry = lifecycle.after_crash(attempts, spawned=spawned, now=now)
        attempts, now = retry.attempts, retry.at
        delays.append(retry.delay)
    assert delays == [1, 2, 4, 8, 16]


def test_a_crash_soon_after_spawn_following_a_long_build_does_not_reset_the_backoff() -> None:
    # Prepared at 0, a 120 s build, spawned at 120, dead at 125: 5 s of uptime, not 125.
    retry = lifecycle.after_crash(3, spawned=120.0, now=125.0)
    assert retry.attempts == 4 and retry.delay == 8.0 and retry.at == 133.0


def test_a_crash_after_a_healthy_while_starts_the_backoff_over() -> None:
    retry = lifecycle.after_crash(6, spawned=0.0, now=lifecycle.HEALTHY_AFTER + 1)
    assert retry.attempts == 1 and retry.delay == 1.0


def test_a_transient_build_error_is_retried_with_growing_delays_up_to_five_minutes() -> None:
    attempts, now, delays = 0, 0.0, []
    for _ in range(8):
        retry = lifecycle.after_transient_failure(attempts, now=now)
        assert retry.at == now + retry.delay
        attempts, now = retry.attempts, retry.at
        delays.append(retry.delay)
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300]


def test_a_load_error_while_the_last_good_serves_is_shown_beside_it() -> None:
    def answer(**kw: bool) -> str:
        facts = {"start_error": False, "load_error": False, "serves_well": True,
                 "keep_last_good": True, **kw}  # fmt: skip
        return lifecycle.on_answer(**facts)

    assert answer() == "ready"
    assert answer(load_error=True) == "failed-beside-last-good"
    assert answer(load_error=True, serves_well=False) == "ready"  # the error is served
    assert answer(load_error=True, keep_last_good=False) == "ready"  # show-error mode
    assert answer(start_error=True) == "start-failed"


def test_a_ready_version_is_served_only_once_its_file_is_stable_at_it() -> None:
    ready = {"ready": True, "last_good": False, "generation": "v2"}
    assert lifecycle.promotion(**ready, stable="v2") == "file"
    assert lifecycle.promotion(**ready, stable="v3") == "wait"  # edited again since
    assert lifecycle.promotion(**ready, stable=None) == "wait"  # still being written
    assert lifecycle.promotion(**{**ready, "ready": False}, stable="v2") == "wait"
    # The last good version again: served at once, whatever the share holds now.
    assert lifecycle.promotion(**{**ready, "last_good": True}, stable="v9") == "last-good"


def test_a_static_name_change_looks_again_at_failed_versions_only() -> None:
    assert lifecycle.look_again({"a": True, "b": False}) == {"a"}


def test_servers_start_a_few_at_a_time_and_a_hanging_one_gives_up_its_slot() -> None:
    assert lifecycle.free_start_slots([], now=100.0, slots=2) == 2
    assert lifecycle.free_start_slots([99.0], now=100.0, slots=2) == 1
    assert lifecycle.free_start_slots([99.0, 98.0, 97.0], now=100.0, slots=2) == 0
    hung = 100.0 - lifecycle.SLOT_HELD_FOR
    assert lifecycle.free_start_slots([hung, 99.0], now=100.0, slots=2) == 1
