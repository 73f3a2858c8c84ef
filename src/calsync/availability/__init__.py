"""Availability: who is busy when, conflict checks, free-slot search and atomic bookings.

- ``busy``     the pure core: busy rules, working hours (zoneinfo, DST-correct), interval
               merge, free slots, staleness. No I/O.
- ``store``    loads users, schedule items, external busy blocks and calendar health for
               users x range in a few indexed queries.
- ``views``    turns loaded rows into event views for :mod:`calsync.privacy`.
- ``check``    availability check, slot search and the dispatcher schedule (masked).
- ``booking``  atomic bookings: a DB lock, a check, then the insert.
- ``commands`` the ``calsync check`` command.
"""
