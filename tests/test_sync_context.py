"""What a connector is told about its user: timezone (floating times) and addresses
(whose PARTSTAT/responseStatus counts as the owner's answer)."""

from __future__ import annotations

from calsync.db.models import Connection
from calsync.db.session import Database
from calsync.schedule.store import import_document
from calsync.secrets import CredentialBox
from calsync.sync.runner import connect_context


def test_connector_options_carry_the_users_zone_and_addresses(db: Database, settings) -> None:
    import_document(db, {"users": [{"id": "u1", "name": "Jane", "email": "jane@example.com",
                                    "timezone": "Europe/Berlin"}]})
    box = CredentialBox.from_settings(settings)
    with db.session() as s:
        conn = Connection(user_id="u1", provider="caldav", account="jane.doe@icloud.com",
                          credentials=box.seal({"username": "jane", "password": "pw"}),
                          settings={"sync_collection": False})
        s.add(conn)
        s.flush()
        ctx = connect_context(settings, conn)
    assert ctx.options["timezone"] == "Europe/Berlin"
    assert ctx.options["emails"] == ["jane@example.com", "jane.doe@icloud.com"]
    assert ctx.options["sync_collection"] is False  # per-connection settings still win
    assert ctx.credentials == {"username": "jane", "password": "pw"}
