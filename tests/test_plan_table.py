"""plan_sync, exhaustively: every local state x remote state x ownership x conflict policy.

Local states: absent (no item passed), unchanged, changed, deleted (tombstone/cancelled).
Remote states: absent (no copy, no link), copy (a calsync copy without a link: adoption),
unchanged, changed, deleted (linked, gone remotely). For newest_wins both orders of the
edit times are tried. Expected outcomes are written out below, cell by cell.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import replace
from typing import Any

import pytest

from calsync.sync.connector import OutgoingEvent, RemoteEvent
from calsync.sync.hashing import external_hash, outgoing_hash, remote_hash
from calsync.sync.plan import (
    AdoptRemote,
    CreateRemote,
    DeleteRemote,
    DropExternal,
    ImportExternal,
    LinkRecord,
    LocalItem,
    Policy,
    PullDelete,
    PullEdit,
    RefreshExternal,
    Relink,
    RemoteItem,
    Unlink,
    UpdateRemote,
    plan_sync,
)

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 11, 23, 12, tzinfo=UTC)
START = dt.datetime(2026, 11, 24, 15, tzinfo=UTC)
LOCAL_STATES = ("absent", "unchanged", "changed", "deleted")
REMOTE_STATES = ("absent", "copy", "unchanged", "changed", "deleted")
POLICIES = ("calsync_wins", "remote_wins", "newest_wins:local_newer",
            "newest_wins:remote_newer")

# cell value: a list of (action, reason) for every policy, or a dict policy -> that list.
C, U, D, A = "CreateRemote", "UpdateRemote", "DeleteRemote", "AdoptRemote"
PE, PD, UL, RL = "PullEdit", "PullDelete", "Unlink", "Relink"

COMMON: dict[tuple[str, str], Any] = {
    ("absent", "absent"): [], ("unchanged", "absent"): [(C, "new")],
    ("changed", "absent"): [(C, "new")], ("deleted", "absent"): [],
    ("absent", "copy"): [], ("unchanged", "copy"): [(A, None)],
    ("changed", "copy"): [(A, None), (U, "adopt")], ("deleted", "copy"): [(D, "local_delete")],
    ("absent", "unchanged"): [], ("absent", "changed"): [], ("absent", "deleted"): [],
    ("unchanged", "unchanged"): [], ("changed", "unchanged"): [(U, "local_change")],
    ("deleted", "unchanged"): [(D, "local_delete")], ("deleted", "deleted"): [(UL, None)],
}
JOB = COMMON | {
    ("unchanged", "changed"): [(U, "revert")], ("changed", "changed"): [(U, "local_change")],
    ("deleted", "changed"): [(D, "local_delete")], ("unchanged", "deleted"): [(C, "revert")],
    ("changed", "deleted"): [(C, "new")],
}
USER_OWNED = COMMON | {
    ("unchanged", "changed"): [(PE, "remote_change")],
    ("changed", "changed"): {"calsync_wins": [(U, "conflict")],
                             "remote_wins": [(PE, "conflict")],
                             "newest_wins:local_newer": [(U, "conflict")],
                             "newest_wins:remote_newer": [(PE, "conflict")]},
    ("deleted", "changed"): {"calsync_wins": [(D, "conflict")],
                             "remote_wins": [(PE, "conflict")],
                             "newest_wins:local_newer": [(D, "conflict")],
                             "newest_wins:remote_newer": [(PE, "conflict")]},
    ("unchanged", "deleted"): [(PD, "remote_delete")],
    ("changed", "deleted"): {"calsync_wins": [(C, "conflict")],
                             "remote_wins": [(PD, "conflict")],
                             "newest_wins:local_newer": [(C, "conflict")],
                             "newest_wins:remote_newer": [(C, "conflict")]},
}
EXPECTED = {"job": JOB, "time_off": USER_OWNED, "block": USER_OWNED}


def outgoing(key: str, summary: str) -> OutgoingEvent:
    return OutgoingEvent(key=key, uid=f"{key}@calsync", summary=summary, start=START,
                         end=START + dt.timedelta(hours=2), all_day=False, tzid="UTC")


def remote_event(rid: str, etag: str, key: str | None, summary: str,
                 modified: dt.datetime) -> RemoteEvent:
    return RemoteEvent(remote_id=rid, etag=etag, calsync_key=key, summary=summary,
                       start=START, end=START + dt.timedelta(hours=2), last_modified=modified)


def scenario(kind: str, lstate: str, rstate: str, policy: str
             ) -> tuple[list[LocalItem], dict[str, RemoteItem], list[LinkRecord], Policy]:
    key = f"{kind.replace('_', '-')}-x"
    base = outgoing(key, "Original")
    base_hash = outgoing_hash(base)
    local_newer = policy.endswith("local_newer")
    remote_modified = NOW - dt.timedelta(minutes=30)
    local_time = NOW - dt.timedelta(minutes=10 if local_newer else 50)
    local: list[LocalItem] = []
    if lstate != "absent":
        event = replace(base, summary="Local edit") if lstate == "changed" else base
        local.append(LocalItem(1, key, kind, event, outgoing_hash(event), local_time,
                               alive=lstate != "deleted"))
    remote: dict[str, RemoteItem] = {}
    links: list[LinkRecord] = []
    base_remote = remote_event("r1", "e1", key, "Original", remote_modified)
    if rstate in ("unchanged", "changed", "deleted"):
        links.append(LinkRecord("r1", "e1", remote_hash(base_remote), 1, base_hash))
    if rstate == "unchanged":
        remote["r1"] = RemoteItem("r1", "e1", key, remote_hash(base_remote))
    elif rstate == "changed":
        ev = remote_event("r1", "e2", key, "Remote edit", remote_modified)
        remote["r1"] = RemoteItem("r1", "e2", key, remote_hash(ev), ev, remote_modified)
    elif rstate == "copy":
        ev = remote_event("r9", "e9", key, "Original", remote_modified)
        remote["r9"] = RemoteItem("r9", "e9", key, remote_hash(ev), ev, remote_modified)
    name = policy.split(":")[0]
    return local, remote, links, Policy(conflict_policy=name)  # type: ignore[arg-type]


def summarise(actions: list[Any]) -> list[tuple[str, str | None]]:
    return [(type(a).__name__, getattr(a, "reason", None)) for a in actions]


CASES = [(kind, l, r, p) for kind in EXPECTED
         for l, r, p in itertools.product(LOCAL_STATES, REMOTE_STATES, POLICIES)]


@pytest.mark.parametrize("kind,lstate,rstate,policy", CASES,
                         ids=[f"{k}-L{l}-R{r}-{p}" for k, l, r, p in CASES])
def test_plan_table(kind: str, lstate: str, rstate: str, policy: str) -> None:
    local, remote, links, pol = scenario(kind, lstate, rstate, policy)
    cell = EXPECTED[kind][(lstate, rstate)]
    expected = cell[policy] if isinstance(cell, dict) else cell
    actions = plan_sync(local, remote, links, pol, NOW)
    assert summarise(actions) == expected
    # the actions carry the right payloads
    for a in actions:
        if isinstance(a, (CreateRemote, UpdateRemote)):
            assert a.event == local[0].event and a.local_hash == local[0].hash
        if isinstance(a, UpdateRemote):
            assert a.remote_id == ("r9" if rstate == "copy" else "r1")
            assert a.etag == {"copy": "e9", "changed": "e2"}.get(rstate, "e1")
        if isinstance(a, DeleteRemote):
            assert a.remote_id == ("r9" if rstate == "copy" else "r1")
        if isinstance(a, PullEdit):
            assert a.remote is remote["r1"] and a.restore == (lstate == "deleted")
        if isinstance(a, AdoptRemote):
            assert a.remote_id == "r9"
            assert a.local_hash == (local[0].hash if lstate == "unchanged" else "")
    # pure: the same inputs give the same plan
    assert plan_sync(local, remote, links, pol, NOW) == actions


EXTERNAL_CASES = {"absent": [], "new": [ImportExternal], "unchanged": [],
                  "changed": [RefreshExternal], "deleted": [DropExternal]}


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("rstate", list(EXTERNAL_CASES))
@pytest.mark.parametrize("role", ["primary", "conflict"])
def test_plan_external_events(rstate: str, policy: str, role: str) -> None:
    """External events (no calsync key) become busy blocks, never remote writes."""
    ev = RemoteEvent(remote_id="x1", etag="e1", summary="Dentist", start=START,
                     end=START + dt.timedelta(hours=1))
    edited = replace(ev, etag="e2", summary="Dentist (moved)",
                     start=START + dt.timedelta(hours=1), end=START + dt.timedelta(hours=2))
    links = [] if rstate in ("absent", "new") else [LinkRecord("x1", "e1", external_hash(ev))]
    remote = {
        "absent": {}, "deleted": {},
        "new": {"x1": RemoteItem("x1", "e1", None, external_hash(ev), ev)},
        "unchanged": {"x1": RemoteItem("x1", "e1", None, external_hash(ev))},
        "changed": {"x1": RemoteItem("x1", "e2", None, external_hash(edited), edited)},
    }[rstate]
    pol = Policy(conflict_policy=policy.split(":")[0],  # type: ignore[arg-type]
                 push=role == "primary")
    actions = plan_sync([], remote, links, pol, NOW)
    assert [type(a) for a in actions] == EXTERNAL_CASES[rstate]


def test_changed_occurrences_alone_refresh_an_external_event() -> None:
    from calsync.sync.connector import Occurrence

    ev = RemoteEvent(remote_id="x1", etag="e1", summary="Standup", start=START,
                     end=START + dt.timedelta(minutes=15), recurring=True,
                     occurrences=[Occurrence(START, START + dt.timedelta(minutes=15))])
    fewer = replace(ev, etag="e2", occurrences=[])  # an EXDATE added: same master fields
    links = [LinkRecord("x1", "e1", external_hash(ev))]
    actions = plan_sync([], {"x1": RemoteItem("x1", "e2", None, external_hash(fewer), fewer)},
                        links, Policy(), NOW)
    assert [type(a) for a in actions] == [RefreshExternal]


def test_etag_only_change_relinks_without_writing() -> None:
    local, remote, links, pol = scenario("job", "unchanged", "unchanged", "calsync_wins")
    remote["r1"] = replace(remote["r1"], etag="e5")
    assert summarise(plan_sync(local, remote, links, pol, NOW)) == [(RL, None)]


def test_both_sides_changed_to_the_same_content_relinks() -> None:
    local, remote, links, pol = scenario("block", "changed", "changed", "remote_wins")
    ev = remote_event("r1", "e2", "block-x", "Local edit", NOW)
    remote["r1"] = RemoteItem("r1", "e2", "block-x", remote_hash(ev), ev, NOW)
    assert local[0].hash == remote_hash(ev)  # the two sides' hashes are comparable
    [action] = plan_sync(local, remote, links, pol, NOW)
    assert isinstance(action, Relink) and action.local_hash == local[0].hash


def test_duplicate_copies_are_deleted() -> None:
    local, remote, links, pol = scenario("job", "unchanged", "unchanged", "newest_wins")
    extra = remote_event("r7", "e7", "job-x", "Original", NOW)
    remote["r7"] = RemoteItem("r7", "e7", "job-x", remote_hash(extra), extra)
    assert summarise(plan_sync(local, remote, links, pol, NOW)) == [(D, "duplicate")]
    # two unlinked copies: adopt one, delete the other
    local, remote, _, pol = scenario("job", "unchanged", "copy", "newest_wins")
    remote["r7"] = RemoteItem("r7", "e7", "job-x", remote_hash(extra), extra)
    assert summarise(plan_sync(local, remote, [], pol, NOW)) == [(A, None), (D, "duplicate")]


def test_read_only_and_pull_only_calendars_get_no_remote_writes() -> None:
    for rstate in REMOTE_STATES:
        for lstate in LOCAL_STATES:
            local, remote, links, _ = scenario("job", lstate, rstate, "calsync_wins")
            for pol in (Policy(writable=False), Policy(push=False)):
                actions = plan_sync(local, remote, links, pol, NOW)
                assert not any(isinstance(a, (CreateRemote, UpdateRemote, DeleteRemote))
                               for a in actions), (lstate, rstate, pol)
            # pull-only: our items are not planned at all, keyed copies are not imported
            assert plan_sync(local, remote, links, Policy(push=False), NOW) == []


def test_newest_wins_without_remote_timestamp_counts_remote_as_now() -> None:
    local, remote, links, _ = scenario("block", "changed", "changed", "newest_wins")
    remote["r1"] = replace(remote["r1"], last_modified=None)
    [action] = plan_sync(local, remote, links, Policy(), NOW)
    assert isinstance(action, PullEdit)
    later_local = [replace(local[0], updated_at=NOW)]
    [action] = plan_sync(later_local, remote, links, Policy(), NOW)
    assert isinstance(action, UpdateRemote)  # a tie keeps calsync's


def test_items_are_planned_independently() -> None:
    """A plan for several items is the concatenation of the single-item plans."""
    cells = [("job", "changed", "unchanged"), ("block", "unchanged", "deleted"),
             ("time_off", "unchanged", "absent")]
    local, remote, links = [], {}, []
    for i, (kind, l, r) in enumerate(cells, start=1):
        lo, re, li, _ = scenario(kind, l, r, "calsync_wins")
        local += [replace(x, pk=i, key=f"{x.key}{i}") for x in lo]
        remote.update({f"{k}-{i}": replace(v, remote_id=f"{k}-{i}", key=f"{v.key}{i}")
                       for k, v in re.items()})
        links += [replace(x, item_pk=i, remote_id=f"{x.remote_id}-{i}") for x in li]
    got = summarise(plan_sync(local, remote, links, Policy(), NOW))
    assert got == [(U, "local_change"), (PD, "remote_delete"), (C, "new")]
    assert all(isinstance(x, (UpdateRemote, PullDelete, CreateRemote, Unlink))
               for x in plan_sync(local, remote, links, Policy(), NOW))
