"""The audit log: who did what to which thing. Never holds secrets."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from calsync.db.models import AuditEntry, utcnow


def audit(session: Session, actor: str, action: str, target_kind: str, target_id: str,
          detail: dict[str, Any] | None = None, at: dt.datetime | None = None) -> None:
    session.add(AuditEntry(actor=actor, action=action, target_kind=target_kind,
                           target_id=str(target_id), detail=detail or {}, at=at or utcnow()))
