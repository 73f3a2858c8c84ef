"""The registry of contract backends: name -> factory(tmp_path) -> ContractBackend.

Add a backend with ONE line in ``BACKENDS`` below, naming its class lazily as
``"module:attribute"`` (imported only when that backend's tests run), e.g.

    "radicale": lazy("tests.contract.backend_caldav:RadicaleBackend"),

The factory is called as ``factory(tmp_path)``; when it accepts a second parameter it is
called as ``factory(tmp_path, request)`` with pytest's ``request`` (to reach fixtures such as
a session-scoped server: ``request.getfixturevalue("radicale_server")``). A backend whose
module is missing (not written yet) is skipped locally and fails in CI.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.contract.backend import ContractBackend

BackendFactory = Callable[..., ContractBackend]


class MissingBackend(Exception):
    """The module named for a backend cannot be imported."""


def lazy(target: str) -> BackendFactory:
    """A factory importing ``module:attribute`` on first use."""
    module_name, _, attr = target.partition(":")

    def factory(tmp_path: Path, request: Any = None) -> ContractBackend:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                raise MissingBackend(f"{target}: {exc}") from exc
            raise
        target_obj = getattr(module, attr)
        params = inspect.signature(target_obj).parameters
        if len(params) >= 2:
            return target_obj(tmp_path, request)  # type: ignore[no-any-return]
        return target_obj(tmp_path)  # type: ignore[no-any-return]

    factory.__name__ = f"lazy({target})"
    return factory


BACKENDS: dict[str, BackendFactory] = {
    "memory": lazy("tests.contract.backend_memory:MemoryBackend"),
    "radicale": lazy("tests.contract.backend_caldav:RadicaleBackend"),
    "xandikos": lazy("tests.contract.backend_caldav:XandikosBackend"),
    "google": lazy("tests.contract.backend_google:GoogleBackend"),
    "google-domain": lazy("tests.contract.backend_google:GoogleDomainBackend"),
    "graph": lazy("tests.contract.backend_graph:GraphBackend"),
    "graph-tenant": lazy("tests.contract.backend_graph:GraphTenantBackend"),
}

# Backends whose fixture can make a read-only calendar (Xandikos serves none here); the
# read-only case runs on these, and the engine's read-only rule is one central check.
READ_ONLY_BACKENDS = ("google", "google-domain", "graph", "graph-tenant", "memory",
                      "radicale")
