"""Finding an account's calendars: principal, calendar-home-set, calendar collections.

Works from any starting URL the user gives (server root, principal, home set): PROPFIND
``current-user-principal``, then ``calendar-home-set`` on the principal. The home set may
live on another host (iCloud answers on caldav.icloud.com and points at a
``pNN-caldav.icloud.com`` home): every later request goes to the URL found.
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from calsync.errors import CalsyncError
from calsync.sync.connector import RemoteCalendar
from calsync_caldav import davxml
from calsync_caldav.davxml import CALDAV, DAV, ICAL, q
from calsync_caldav.transport import DavSession

_COLLECTION_PROPS = ("d:resourcetype", "d:displayname", "c:supported-calendar-component-set",
                     "d:current-user-privilege-set", "i:calendar-color", "cs:getctag")


def _propfind(session: DavSession, url: str, depth: str, *props: str) -> davxml.Multistatus:
    resp = session.request("PROPFIND", url, body=davxml.propfind(*props), depth=depth,
                           what="discovery")
    if resp.status_code != 207:
        raise session.unexpected(resp, url, "PROPFIND")
    try:
        return davxml.parse_multistatus(resp.content)
    except ValueError as exc:
        raise session.unexpected(resp, url, f"PROPFIND (bad answer: {exc})") from exc


def find_home(session: DavSession, url: str) -> str:
    """The calendar-home-set URL (absolute, canonical encoding) reached from ``url``."""
    return davxml.canonical_url(_find_home(session, url))


def _find_home(session: DavSession, url: str) -> str:
    try:
        found = _propfind(session, url, "0", "d:current-user-principal", "c:calendar-home-set")
    except CalsyncError as exc:
        # A web server's root that is not the DAV endpoint: RFC 6764 well-known URL.
        if urlsplit(url).path not in ("", "/") or \
                exc.context.get("status") not in (400, 403, 404, 405, 501):
            raise
        well_known = urljoin(url, "/.well-known/caldav")
        found = _propfind(session, well_known, "0", "d:current-user-principal",
                          "c:calendar-home-set")
        url = well_known
    for item in found.responses:
        homes = item.hrefs(q(CALDAV, "calendar-home-set"))
        if homes:
            return urljoin(url, homes[0])
    principal = None
    for item in found.responses:
        hrefs = item.hrefs(q(DAV, "current-user-principal"))
        if hrefs:
            principal = urljoin(url, hrefs[0])
            break
    if principal is None:
        return url  # no discovery support: take the URL as the home set
    found = _propfind(session, principal, "0", "c:calendar-home-set")
    for item in found.responses:
        homes = item.hrefs(q(CALDAV, "calendar-home-set"))
        if homes:
            return urljoin(principal, homes[0])
    return principal


def _components(item: davxml.DavResponse) -> set[str] | None:
    el = item.props.get(q(CALDAV, "supported-calendar-component-set"))
    if el is None:
        return None  # RFC 4791 5.2.3: absent means any component type
    return {(c.get("name") or "").upper() for c in el.findall(q(CALDAV, "comp"))}


def _read_only(item: davxml.DavResponse) -> bool:
    el = item.props.get(q(DAV, "current-user-privilege-set"))
    if el is None:
        return False
    granted = {p.tag for priv in el.findall(q(DAV, "privilege")) for p in priv}
    writable = {q(DAV, "write"), q(DAV, "write-content"), q(DAV, "all"), q(DAV, "bind")}
    return not (granted & writable)


def list_collections(session: DavSession, home: str) -> list[RemoteCalendar]:
    """Calendar collections directly under ``home`` that can hold VEVENTs."""
    found = _propfind(session, home, "1", *_COLLECTION_PROPS)
    calendars: list[RemoteCalendar] = []
    for item in found.responses:
        if not item.has(q(DAV, "resourcetype"), q(CALDAV, "calendar")):
            continue
        comps = _components(item)
        supports_events = comps is None or "VEVENT" in comps
        if not supports_events:
            continue
        url = davxml.canonical_url(urljoin(home, item.href))
        if not url.endswith("/"):
            url += "/"
        color = item.text(q(ICAL, "calendar-color")) or None
        name = item.text(q(DAV, "displayname")) or url.rstrip("/").rsplit("/", 1)[-1]
        calendars.append(RemoteCalendar(id=url, name=name, read_only=_read_only(item),
                                        supports_events=True, color=color))
    calendars.sort(key=lambda c: (c.name.lower(), c.id))
    return calendars


