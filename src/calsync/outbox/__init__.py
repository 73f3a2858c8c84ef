"""Outgoing events for the platform: the transactional outbox, webhook endpoints, signed
delivery and the change feed (DESIGN 4.7).

- :mod:`calsync.outbox.events`: what an event says (masked builders) and :func:`emit`,
  which writes the event in the caller's transaction; :func:`sequence` numbers committed
  events in commit order and fans them out to the endpoints;
- :mod:`calsync.outbox.endpoints`: registering, listing (with health), removing endpoints,
  test events and recent deliveries;
- :mod:`calsync.outbox.delivery`: claiming deliveries with leases, signing (Standard
  Webhooks), retries with backoff and jitter, the delivery worker;
- :mod:`calsync.outbox.changes`: the polling change feed and its opaque cursors;
- :mod:`calsync.outbox.metrics`: delivery counters and outbox gauges for ``/metrics``.
"""
