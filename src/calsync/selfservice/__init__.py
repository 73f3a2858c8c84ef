"""Self-service: what a technician (or the platform acting for them) does without an
operator at a shell. Plain functions over the database and the connectors, shared by the
HTTP API (``calsync.api.connections``, ``PATCH /api/users/{id}``) and the web pages, so that
roles and shapes are enforced in one place.

- :mod:`calsync.selfservice.access`       who may read or change a user's connections;
- :mod:`calsync.selfservice.connections`  list, connect (CalDAV, iCloud), set calendars,
  refresh, sync now, disconnect;
- :mod:`calsync.selfservice.oauth`        start an Outlook/Google sign-in that comes back to
  a page (``return_to``) and finish it;
- :mod:`calsync.selfservice.users`        partial updates of a user with the role rules.

Every function takes a *viewer* (:class:`calsync.selfservice.access.Viewer`: anything with
``role``, ``user_id`` and ``actor``, e.g. ``calsync.api.auth.Principal``) and ``now``; they
raise calsync's typed errors (``Forbidden`` 403, ``NotFound`` 404, ``ValidationError`` /
``ConnectFailed`` 422, ...), which the API turns into ``{"error", "detail"}``.
"""
