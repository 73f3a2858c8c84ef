"""Availability: who is busy when, conflict checks, free-slot search and atomic bookings.

- ``busy``        the pure core: busy rules, working hours (zoneinfo, DST-correct),
                  interval merge, free slots, staleness. No I/O.
- ``statements``  the fixed SQL availability reads with (one statement per check or
                  search).
- ``reads``       where reads run: connections in no transaction, statements run on
                  the driver.
- ``store``       loads users, schedule items, external busy blocks and calendar health
                  for users x range and turns the rows into records.
- ``views``       turns loaded rows into event views for :mod:`calsync.privacy`.
- ``check``       availability check, slot search and the dispatcher schedule (masked).
- ``booking``     atomic bookings: a DB lock, a check, then the insert.
- ``commands``    the ``calsync check`` command.
"""
