"""Two-way sync: the Connector protocol, the pure planner, and the runner.

Modules:
- ``connector``   the protocol every provider plugin implements, and plugin discovery
- ``memory``      the in-memory provider (``memory``): tests, contract suite, demos
- ``hashing``     content hashes ("changed" = content changed, not the etag)
- ``item_events`` schedule items as calendar events, and remote edits back onto items
- ``plan``        ``plan_sync(local, remote, links, policy, now) -> list[Action]`` (pure)
- ``engine``      one calendar: pull, quarantine, guard, plan, apply action by action
- ``runner``      ``run_due_syncs`` / ``sync_connection`` / ``sync_calendar_now``: leases,
                  retries, health
- ``commands``    the CLI: connect, calendars, connections, sync, secrets rotate
"""
