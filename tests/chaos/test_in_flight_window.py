"""Which billed replies the chaos harness counts as in flight at a kill (bench/chaos.py, `Kill.held`): no demo, no
simulator, timelines in the shape of a recorded failure.

The recorded failure (`python bench/chaos.py --seeds 4`, 2,000 rows, 12 kills, a loaded 2-core machine): the
killed process wrote each reply's `billed` row 0.34-0.37 s after the simulator let go of it; the kill landed
while 5 replies the simulator had let go of 0.30-0.33 s earlier were still unread. A fixed 0.25 s grace called
them "never in flight" although nothing was wrong with the count: report + those replies == the bill, exactly.
"""

from __future__ import annotations

from bench.chaos import GRACE_S, Kill, handling_lags

KILL_AT = 1_000.0
STARTED = KILL_AT - 10.0
LATENCY_S = 0.08
SPACING_S = 0.012  # the simulator bills one 5,000-token classifier request every ~12 ms
LAG_S = 0.37  # how long after the simulator let go of a reply the killed process wrote its `billed` row


def _timeline(lag_s: float, first_t: float, n: int) -> tuple[list[dict], list[dict]]:
    """`n` replies billed every SPACING_S from `first_t`, each handled `lag_s` after the simulator let go of it,
    unless the kill came first; the next process sends its first request 9 s after the kill."""
    records, ledger = [], []
    for i in range(n):
        t = first_t + i * SPACING_S
        reply = {"t": t, "latency_s": LATENCY_S, "status": "200", "reply_id": f"chatcmpl-{i}"}
        records.append(reply)
        ledger.append({"at": t - 0.4, "event": "sent", "provider_request_id": None})
        handled_at = t + LATENCY_S + lag_s
        if handled_at <= KILL_AT:
            ledger.append({"at": handled_at, "event": "billed", "provider_request_id": reply["reply_id"]})
    ledger.append({"at": KILL_AT + 9.0, "event": "sent", "provider_request_id": None})
    ledger.sort(key=lambda row: row["at"])
    return records, ledger


def _kill(records: list[dict], ledger: list[dict]) -> Kill:
    kill = Kill(at=KILL_AT, trigger="timer", started=STARTED)
    lags = handling_lags(records, ledger)
    kill.measure(records, ledger, lags[-1] if lags else GRACE_S)
    return kill


def _unseen(records: list[dict], ledger: list[dict]) -> list[dict]:
    seen = {row["provider_request_id"] for row in ledger if row["event"] == "billed"}
    return [r for r in records if r["reply_id"] not in seen]


def test_replies_unread_for_longer_than_the_fixed_grace_are_in_flight_when_the_client_lags() -> None:
    records, ledger = _timeline(LAG_S, first_t=KILL_AT - 1.5, n=125)
    unseen = _unseen(records, ledger)
    # The replies that failed the fixed window: let go of more than GRACE_S before the kill, never handled.
    stale = [r for r in unseen if r["t"] + r["latency_s"] + GRACE_S < KILL_AT]
    assert stale, "the timeline must hold replies a fixed 0.25 s grace calls 'not in flight'"
    kill = _kill(records, ledger)
    assert kill.at - kill.unread_since >= LAG_S
    assert all(kill.held(r) for r in unseen)
    assert kill.in_flight >= len(unseen)


def test_replies_next_in_line_when_a_stall_is_cut_short_are_in_flight() -> None:
    """A process that read every reply within 0.1 s, killed 0.5 s into a stall (the run's longest lag is 0.1 s):
    the replies let go of after the last one it read were next in line, not skipped."""
    records, ledger = _timeline(0.1, first_t=KILL_AT - 3.0, n=250)
    stall_from = KILL_AT - 0.5
    ledger = [row for row in ledger if not (row["event"] == "billed" and row["at"] > stall_from)]
    unseen = _unseen(records, ledger)
    assert any(r["t"] + r["latency_s"] < KILL_AT - 0.35 for r in unseen)  # older than the measured lag allows
    kill = _kill(records, ledger)
    assert all(kill.held(r) for r in unseen)


def test_a_reply_left_unrecorded_long_before_the_kill_is_not_in_flight() -> None:
    """The window follows the measured lag, not "anything goes": a reply the simulator let go of seconds before
    the kill while later replies were handled (a lost `billed` row, a counting bug) is still caught."""
    records, ledger = _timeline(LAG_S, first_t=KILL_AT - 5.0, n=400)
    dropped = records[10]  # let go of ~4.8 s before the kill; replies let go of after it were handled
    ledger = [row for row in ledger if row["provider_request_id"] != dropped["reply_id"]]
    kill = _kill(records, ledger)
    assert not kill.held(dropped)
    assert all(kill.held(r) for r in _unseen(records, ledger) if r is not dropped)


def test_every_reply_to_a_process_killed_before_it_handled_one_is_in_flight() -> None:
    """A process killed while its first replies sat unread (startup is slow: imports, the first checkpoint):
    each of them was in flight, however long ago the simulator let go of it."""
    records, ledger = _timeline(lag_s=5.0, first_t=KILL_AT - 2.0, n=32)
    kill = _kill(records, ledger)
    assert kill.handled == 0
    assert all(kill.held(r) for r in records)


def test_replies_billed_after_the_kill_before_the_next_process_sends_are_in_flight() -> None:
    """Requests still in the killed process's socket reach the simulator after the kill, up to the next process's
    first request (the spend ledger's next `sent` row), which can be more than ARRIVAL_S later on a loaded machine."""
    records, ledger = _timeline(LAG_S, first_t=KILL_AT - 1.0, n=32)
    late = {"t": KILL_AT + 2.5, "latency_s": LATENCY_S, "status": "200", "reply_id": "chatcmpl-late"}
    kill = _kill([*records, late], ledger)
    assert kill.held(late)
    after_next = {**late, "t": KILL_AT + 9.5, "reply_id": "chatcmpl-next-process"}
    assert not kill.held(after_next)
