"""``calsync serve --workers N``: the application factory each HTTP worker process runs.

uvicorn starts N processes that share the listening socket; each builds its own
application, database engine and feed memo from the same configuration the command was
given (``CALSYNC_SERVE_CONFIG``, ``CALSYNC_SERVE_HOST``, ``CALSYNC_SERVE_PORT``, set by the
command), so the workers serve the same thing. The scheduler stays in the parent process.

Every process speaks HTTP through :class:`calsync.api.feedproto.FeedHttpProtocol`, which
answers feed requests held in memory as soon as they are read.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

CONFIG_ENV, HOST_ENV, PORT_ENV = "CALSYNC_SERVE_CONFIG", "CALSYNC_SERVE_HOST", "CALSYNC_SERVE_PORT"
HTTP_PROTOCOL = "calsync.api.feedproto:FeedHttpProtocol"


def run(app: FastAPI | None, host: str, port: int, workers: int = 1) -> None:
    """Serve ``app`` in this process, or (``workers`` > 1) ``workers`` processes that each
    build their own from the environment (:func:`app_from_environment`)."""
    import uvicorn

    from calsync.heap import freeze_startup_heap

    options: dict[str, object] = {"host": host, "port": port, "log_level": "info",
                                  "access_log": False, "http": HTTP_PROTOCOL}
    if workers > 1:
        uvicorn.run("calsync.api.serving:app_from_environment", factory=True,
                    workers=workers, **options)  # type: ignore[arg-type]
    else:
        assert app is not None
        freeze_startup_heap()
        uvicorn.run(app, **options)  # type: ignore[arg-type]


def app_from_environment() -> FastAPI:
    """Build the app of one worker process (a uvicorn factory)."""
    from calsync.api.app import create_app
    from calsync.cli import follow_port
    from calsync.config import load_settings
    from calsync.db.session import Database, pool_size_for
    from calsync.heap import freeze_startup_heap
    from calsync.secrets import resolve_secret_key

    settings = resolve_secret_key(load_settings(os.environ.get(CONFIG_ENV) or None))
    port = os.environ.get(PORT_ENV)
    settings = follow_port(settings, os.environ.get(HOST_ENV), int(port) if port else None)
    app = create_app(settings, Database(settings.database.url, echo=settings.database.echo,
                                        pool_size=pool_size_for(settings)))
    freeze_startup_heap()
    return app
