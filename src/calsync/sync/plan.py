"""The reconcile step: ``plan_sync(local, remote, links, policy, now) -> list[Action]``. Pure.

Inputs describe one remote calendar:

- ``local``: the schedule items that belong on it (:class:`LocalItem`; ``alive=False`` for a
  deleted, cancelled or unassigned item whose copy must go). Linked items outside the sync
  window are simply not passed: their copies are left alone.
- ``remote``: what the calendar holds now, by remote id (:class:`RemoteItem`). After an
  incremental pull, objects not in the change set are passed with ``event=None`` and the
  hash recorded at the last sync; deleted objects are absent.
- ``links``: the records of the last sync (:class:`LinkRecord`): one per linked schedule
  item (``item_pk`` set) and one per external event (``item_pk=None``).

Rules (DESIGN 6). "Changed" compares content hashes with those recorded in the link.

- Jobs are dispatch-owned: a remote edit or delete of a job's copy is reverted
  (``reason="revert"``; the executor writes it to the audit log). Cancelled or deleted jobs
  have their remote copy deleted.
- Time off and blocks are user-owned: edits and deletes on either side propagate. When both
  sides changed, ``policy.conflict_policy`` decides: ``calsync_wins``, ``remote_wins``, or
  ``newest_wins`` comparing the item's ``updated_at`` with the remote ``last_modified`` (a
  remote without one counts as modified ``now``; a tie keeps calsync's). A delete on one side
  against an edit on the other is a conflict too; under ``newest_wins`` a remote *delete*
  never beats a local edit, since a deletion carries no time (nothing is lost).
- Calendar copies found without a link (a crash between the remote create and the link
  record) are adopted by key; extra copies of an already linked item are deleted.
- External events (no calsync key) are imported, refreshed and dropped as busy blocks,
  never written back. Pull-only calendars (role ``conflict``) get only these.
- Nothing writes to a calendar unless ``policy.writable``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from calsync.sync.connector import OutgoingEvent, RemoteEvent

ConflictPolicy = Literal["newest_wins", "calsync_wins", "remote_wins"]
USER_OWNED = ("time_off", "block")


@dataclass(frozen=True)
class LocalItem:
    pk: int
    key: str
    kind: str  # job | time_off | block
    event: OutgoingEvent
    hash: str  # outgoing_hash(event)
    updated_at: dt.datetime
    alive: bool = True


@dataclass(frozen=True)
class RemoteItem:
    remote_id: str
    etag: str | None
    key: str | None  # calsync_key; None for external events
    hash: str  # remote_hash for calsync copies, external_hash for external events
    event: RemoteEvent | None = None  # None: unchanged since the last sync
    last_modified: dt.datetime | None = None


@dataclass(frozen=True)
class LinkRecord:
    remote_id: str
    etag: str | None
    remote_hash: str
    item_pk: int | None = None  # None: an external event's record
    local_hash: str = ""


@dataclass(frozen=True)
class Policy:
    conflict_policy: ConflictPolicy = "newest_wins"
    push: bool = True  # False: pull-only (conflict calendar) - local items are not planned
    writable: bool = True  # False: a read-only calendar - no remote writes at all


# --- actions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CreateRemote:
    item_pk: int
    key: str
    event: OutgoingEvent
    local_hash: str
    reason: str = "new"  # new | revert | conflict


@dataclass(frozen=True)
class UpdateRemote:
    item_pk: int
    key: str
    remote_id: str
    etag: str | None
    event: OutgoingEvent
    local_hash: str
    reason: str = "local_change"  # local_change | revert | conflict | adopt


@dataclass(frozen=True)
class DeleteRemote:
    item_pk: int | None
    key: str | None
    remote_id: str
    etag: str | None
    reason: str = "local_delete"  # local_delete | conflict | duplicate


@dataclass(frozen=True)
class AdoptRemote:
    """Link an unlinked copy found by key (then an UpdateRemote follows if it differs)."""

    item_pk: int
    key: str
    remote_id: str
    etag: str | None
    local_hash: str
    remote_hash: str


@dataclass(frozen=True)
class PullEdit:
    """Copy a user's remote edit onto a time off/block (``restore`` un-deletes it)."""

    item_pk: int
    key: str
    remote: RemoteItem
    reason: str = "remote_change"  # remote_change | conflict
    restore: bool = False


@dataclass(frozen=True)
class PullDelete:
    item_pk: int
    key: str
    remote_id: str
    reason: str = "remote_delete"  # remote_delete | conflict


@dataclass(frozen=True)
class Relink:
    """Record new hashes/etag without writing (both sides agree, or only the etag moved)."""

    item_pk: int
    remote_id: str
    etag: str | None
    local_hash: str
    remote_hash: str


@dataclass(frozen=True)
class Unlink:
    """Both sides are gone: forget the link."""

    item_pk: int
    remote_id: str


@dataclass(frozen=True)
class ImportExternal:
    remote: RemoteItem


@dataclass(frozen=True)
class RefreshExternal:
    remote: RemoteItem


@dataclass(frozen=True)
class DropExternal:
    remote_id: str


Action = (CreateRemote | UpdateRemote | DeleteRemote | AdoptRemote | PullEdit | PullDelete
          | Relink | Unlink | ImportExternal | RefreshExternal | DropExternal)
REMOTE_WRITES = (CreateRemote, UpdateRemote, DeleteRemote)


# --- the planner --------------------------------------------------------------------------

def _calsync_wins(policy: ConflictPolicy, local: LocalItem, remote: RemoteItem | None,
                  now: dt.datetime, remote_deleted: bool = False) -> bool:
    if policy == "calsync_wins":
        return True
    if policy == "remote_wins":
        return False
    if remote_deleted:
        return True  # a deletion carries no time: the surviving edit wins
    remote_time = (remote.last_modified if remote is not None else None) or now
    return local.updated_at >= remote_time


def _plan_linked(local: LocalItem, link: LinkRecord, remote: RemoteItem | None,
                 policy: Policy, now: dt.datetime) -> list[Action]:
    l_changed = local.alive and local.hash != link.local_hash
    l_deleted = not local.alive
    r_deleted = remote is None
    r_changed = remote is not None and remote.hash != link.remote_hash
    etag = (remote.etag if remote is not None else None) or link.etag

    def update(reason: str) -> UpdateRemote:
        return UpdateRemote(local.pk, local.key, link.remote_id, etag, local.event, local.hash,
                            reason)

    def delete(reason: str) -> DeleteRemote:
        return DeleteRemote(local.pk, local.key, link.remote_id, etag, reason)

    def create(reason: str) -> CreateRemote:
        return CreateRemote(local.pk, local.key, local.event, local.hash, reason)

    if r_deleted:
        if l_deleted:
            return [Unlink(local.pk, link.remote_id)]
        if local.kind == "job":
            return [create("new" if l_changed else "revert")]
        if not l_changed:
            return [PullDelete(local.pk, local.key, link.remote_id)]
        if _calsync_wins(policy.conflict_policy, local, None, now, remote_deleted=True):
            return [create("conflict")]
        return [PullDelete(local.pk, local.key, link.remote_id, "conflict")]

    assert remote is not None
    if l_deleted:
        if local.kind == "job" or not r_changed:
            return [delete("local_delete")]
        if _calsync_wins(policy.conflict_policy, local, remote, now):
            return [delete("conflict")]
        return [PullEdit(local.pk, local.key, remote, "conflict", restore=True)]

    if not r_changed:
        if l_changed:
            return [update("local_change")]
        if remote.etag is not None and remote.etag != link.etag:
            return [Relink(local.pk, link.remote_id, remote.etag, link.local_hash, remote.hash)]
        return []

    # the remote copy changed
    if l_changed and remote.hash == local.hash:
        return [Relink(local.pk, link.remote_id, remote.etag, local.hash, remote.hash)]
    if local.kind == "job":
        return [update("local_change" if l_changed else "revert")]
    if not l_changed:
        return [PullEdit(local.pk, local.key, remote)]
    if _calsync_wins(policy.conflict_policy, local, remote, now):
        return [update("conflict")]
    return [PullEdit(local.pk, local.key, remote, "conflict")]


def plan_sync(local: Iterable[LocalItem], remote: Mapping[str, RemoteItem],
              links: Sequence[LinkRecord], policy: Policy, now: dt.datetime) -> list[Action]:
    """Decide what to do for one calendar. No I/O; deterministic for equal inputs."""
    actions: list[Action] = []
    locals_by_pk = {item.pk: item for item in local} if policy.push else {}
    item_links = {ln.item_pk: ln for ln in links if ln.item_pk is not None}
    external_links = {ln.remote_id: ln for ln in links if ln.item_pk is None}
    linked_remote_ids = {ln.remote_id for ln in item_links.values()}

    # unlinked calsync copies, grouped by key (adoption candidates and duplicates)
    unlinked_copies: dict[str, list[RemoteItem]] = {}
    for rid in sorted(remote):
        r = remote[rid]
        if r.key is not None and rid not in linked_remote_ids:
            unlinked_copies.setdefault(r.key, []).append(r)

    for pk in sorted(locals_by_pk):
        item = locals_by_pk[pk]
        link = item_links.get(pk)
        copies = unlinked_copies.get(item.key, [])
        if link is not None:
            actions.extend(_plan_linked(item, link, remote.get(link.remote_id), policy, now))
            actions.extend(DeleteRemote(pk, item.key, c.remote_id, c.etag, "duplicate")
                           for c in copies)
            continue
        if not item.alive:
            actions.extend(DeleteRemote(pk, item.key, c.remote_id, c.etag, "local_delete")
                           for c in copies)
            continue
        if not copies:
            actions.append(CreateRemote(pk, item.key, item.event, item.hash))
            continue
        keep, extra = copies[0], copies[1:]
        same = keep.hash == item.hash
        actions.append(AdoptRemote(pk, item.key, keep.remote_id, keep.etag,
                                   item.hash if same else "", keep.hash))
        if not same:
            actions.append(UpdateRemote(pk, item.key, keep.remote_id, keep.etag, item.event,
                                        item.hash, "adopt"))
        actions.extend(DeleteRemote(pk, item.key, c.remote_id, c.etag, "duplicate")
                       for c in extra)

    # external events: busy blocks, never written back
    for rid in sorted(remote):
        r = remote[rid]
        if r.key is not None:
            continue
        record = external_links.get(rid)
        if record is None:
            if r.event is not None:
                actions.append(ImportExternal(r))
        elif r.hash != record.remote_hash and r.event is not None:
            actions.append(RefreshExternal(r))
    for rid in sorted(external_links):
        if rid not in remote:
            actions.append(DropExternal(rid))

    if not policy.writable:
        actions = [a for a in actions if not isinstance(a, REMOTE_WRITES)]
    return actions


__all__ = [
    "REMOTE_WRITES", "USER_OWNED", "Action", "AdoptRemote", "CreateRemote", "DeleteRemote",
    "DropExternal", "ImportExternal", "LinkRecord", "LocalItem", "Policy", "PullDelete",
    "PullEdit", "RefreshExternal", "Relink", "RemoteItem", "Unlink", "UpdateRemote",
    "plan_sync",
]
