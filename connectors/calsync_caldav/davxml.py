"""WebDAV/CalDAV XML: request bodies and a multistatus reader. Pure: no I/O.

Answers come from any server a user names, so they are parsed with ``defusedxml``:
entity declarations (billion laughs), external entities and DTD fetches are refused,
and such an answer reads as "not XML".
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit
from xml.sax.saxutils import escape

import defusedxml
import defusedxml.ElementTree as SafeET

DAV = "DAV:"
CALDAV = "urn:ietf:params:xml:ns:caldav"
CS = "http://calendarserver.org/ns/"
ICAL = "http://apple.com/ns/ical/"
_NS = f'xmlns:d="{DAV}" xmlns:c="{CALDAV}" xmlns:cs="{CS}" xmlns:i="{ICAL}"'
_HEAD = '<?xml version="1.0" encoding="utf-8"?>\n'


_SAFE = "/@:+,;=!$&'()*~"


def norm_href(href: str) -> str:
    """The path of ``href`` in one canonical percent-encoding (servers differ)."""
    return quote(unquote(urlsplit(href).path), safe=_SAFE)


def canonical_url(url: str) -> str:
    """``url`` with its path in the canonical encoding of :func:`norm_href`."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, norm_href(url), "", ""))


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def propfind(*props: str) -> bytes:
    """A PROPFIND body; ``props`` are prefixed names such as ``d:displayname``."""
    inner = "".join(f"<{p}/>" for p in props)
    return f"{_HEAD}<d:propfind {_NS}><d:prop>{inner}</d:prop></d:propfind>".encode()


def sync_collection(token: str | None, with_data: bool = True) -> bytes:
    """RFC 6578 sync-collection asking for etags and (``with_data``) the objects themselves,
    so a pull is one request; servers that leave calendar-data out get a
    calendar-multiget after it."""
    tok = f"<d:sync-token>{escape(token)}</d:sync-token>" if token else "<d:sync-token/>"
    data = "<c:calendar-data/>" if with_data else ""
    return (f"{_HEAD}<d:sync-collection {_NS}>{tok}<d:sync-level>1</d:sync-level>"
            f"<d:prop><d:getetag/>{data}</d:prop></d:sync-collection>").encode()


def etag_query() -> bytes:
    """calendar-query listing every object's etag (the ctag/etag fallback)."""
    return (f"{_HEAD}<c:calendar-query {_NS}><d:prop><d:getetag/></d:prop>"
            f'<c:filter><c:comp-filter name="VCALENDAR"/></c:filter>'
            f"</c:calendar-query>").encode()


def multiget(hrefs: list[str]) -> bytes:
    inner = "".join(f"<d:href>{escape(h)}</d:href>" for h in hrefs)
    return (f"{_HEAD}<c:calendar-multiget {_NS}><d:prop><d:getetag/><c:calendar-data/>"
            f"</d:prop>{inner}</c:calendar-multiget>").encode()


def mkcalendar(name: str, components: tuple[str, ...] = ("VEVENT",)) -> bytes:
    comps = "".join(f'<c:comp name="{c}"/>' for c in components)
    return (f"{_HEAD}<c:mkcalendar {_NS}><d:set><d:prop>"
            f"<d:displayname>{escape(name)}</d:displayname>"
            f"<c:supported-calendar-component-set>{comps}</c:supported-calendar-component-set>"
            f"</d:prop></d:set></c:mkcalendar>").encode()


@dataclass
class DavResponse:
    """One ``<response>`` of a multistatus: its href, status and found properties."""

    href: str
    status: int | None = None  # response-level status (sync-collection: 404 = removed)
    props: dict[str, ET.Element] = field(default_factory=dict)  # 200 propstat only

    def text(self, name: str) -> str | None:
        el = self.props.get(name)
        if el is None:
            return None
        return (el.text or "").strip()

    def hrefs(self, name: str) -> list[str]:
        el = self.props.get(name)
        if el is None:
            return []
        return [(h.text or "").strip() for h in el.iter(q(DAV, "href")) if h.text]

    def has(self, name: str, child: str) -> bool:
        el = self.props.get(name)
        return el is not None and el.find(child) is not None


@dataclass
class Multistatus:
    responses: list[DavResponse]
    sync_token: str | None = None


def _status_code(text: str | None) -> int | None:
    if not text:
        return None
    parts = text.split()
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1])
    return None


def parse_xml(body: bytes) -> ET.Element:
    """The root element of an untrusted answer. Raises ValueError when it is not XML or
    declares entities or a DTD that fetches anything."""
    try:
        return cast(ET.Element, SafeET.fromstring(body))
    except defusedxml.DefusedXmlException as exc:
        raise ValueError(f"refused XML ({type(exc).__name__}: entity declarations and "
                         f"external references are not accepted)") from exc
    except ET.ParseError as exc:
        raise ValueError(f"not XML: {exc}") from exc


def parse_multistatus(body: bytes) -> Multistatus:
    """Read a 207 body. Raises ValueError when it is not a multistatus."""
    root = parse_xml(body)
    if root.tag != q(DAV, "multistatus"):
        raise ValueError(f"expected DAV:multistatus, got {root.tag}")
    out: list[DavResponse] = []
    for resp in root.findall(q(DAV, "response")):
        href_el = resp.find(q(DAV, "href"))
        if href_el is None or not href_el.text:
            continue
        item = DavResponse(href=href_el.text.strip(),
                           status=_status_code(resp.findtext(q(DAV, "status"))))
        for propstat in resp.findall(q(DAV, "propstat")):
            code = _status_code(propstat.findtext(q(DAV, "status")))
            prop = propstat.find(q(DAV, "prop"))
            if prop is None or code != 200:
                continue
            for child in prop:
                item.props[child.tag] = child
        out.append(item)
    token = root.findtext(q(DAV, "sync-token"))
    return Multistatus(out, token.strip() if token else None)


def error_conditions(body: bytes) -> set[str]:
    """Local names of the conditions in a DAV:error body (e.g. ``valid-sync-token``)."""
    try:
        root = parse_xml(body)
    except ValueError:
        text = body.decode("utf-8", "replace")
        return {"valid-sync-token"} if "valid-sync-token" in text else set()
    return {child.tag.rsplit("}", 1)[-1] for child in root}
