"""Google sign-in against the emulator: device flow (CLI), authorization code + PKCE (web),
token refresh on expiry, and a revoked refresh token -> needs re-auth without retrying."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import re
import secrets
from urllib.parse import parse_qs, urlparse

import httplib2
import pytest

from calsync.errors import NeedsReauth, UserError
from calsync.sync.connector import ConnectContext, Window, load_connector_factory
from calsync_google import GoogleFactory
from tests.emulators.google import (
    GoogleEmulator,
    google_emulator_fixture,
    google_settings,
    signed_in_context,
)

CAL = "tech@example.com"
google_emulator = google_emulator_fixture()


@pytest.fixture
def em(google_emulator: GoogleEmulator) -> GoogleEmulator:
    return google_emulator


def factory() -> GoogleFactory:
    f = load_connector_factory("google")
    assert isinstance(f, GoogleFactory)
    return f


def bare_context(em: GoogleEmulator, **options: object) -> ConnectContext:
    return ConnectContext(provider="google", url=None, account="", credentials={},
                          settings=google_settings(em), options=dict(options))


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def test_device_flow_prints_code_polls_and_honours_slow_down(em: GoogleEmulator) -> None:
    em.device_slow_down = 1
    sleeps: list[float] = []
    prompts: list[str] = []
    polls_before_approval = 2

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == polls_before_approval + 1:
            code = re.search(r"enter the code (\S+)", prompts[0])
            assert code is not None
            em.approve_device(code.group(1), CAL)

    ctx = factory().device_flow(bare_context(em, sleep=sleep), prompts.append)
    assert len(prompts) == 1 and "https://www.google.com/device" in prompts[0]
    # interval 5; slow_down on the first poll adds 5 seconds; then pending, then approved
    assert sleeps == [5, 10, 10]
    assert em.counts["token:urn:ietf:params:oauth:grant-type:device_code"] == 3
    assert ctx.account == CAL
    assert ctx.credentials["refresh_token"] in em.refresh_tokens
    assert set(ctx.credentials) >= {"token", "refresh_token", "expiry"}
    # the stored credentials work for a fresh connector
    connector = factory().connect(dataclasses.replace(ctx, http=None))
    assert [c.id for c in connector.list_calendars()] == [CAL]


def test_device_flow_declined_is_a_user_error(em: GoogleEmulator) -> None:
    prompts: list[str] = []

    def sleep(_s: float) -> None:
        code = re.search(r"enter the code (\S+)", prompts[0])
        assert code is not None
        em.deny_device(code.group(1))

    with pytest.raises(UserError, match="declined"):
        factory().device_flow(bare_context(em, sleep=sleep), prompts.append)


def test_device_flow_without_client_id_says_what_to_configure(em: GoogleEmulator) -> None:
    ctx = bare_context(em)
    settings = ctx.settings
    ctx = dataclasses.replace(ctx, settings=dataclasses.replace(
        settings, google=dataclasses.replace(settings.google, client_id="")))
    with pytest.raises(UserError, match="google.client_id"):
        factory().device_flow(ctx, print)


def test_web_flow_with_pkce_round_trips_state_and_checks_the_verifier(em: GoogleEmulator) -> None:
    em.login_email = CAL
    redirect = "https://calsync.example.com/oauth/google/callback"
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    url = factory().authorization_url(bare_context(em), state, challenge, redirect)
    query = parse_qs(urlparse(url).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"] == [challenge]
    assert query["access_type"] == ["offline"] and query["prompt"] == ["consent"]
    assert query["scope"] == ["https://www.googleapis.com/auth/calendar"]

    http = httplib2.Http()
    http.follow_redirects = False
    resp, _ = http.request(url, "GET")
    assert resp.status == 302
    back = parse_qs(urlparse(resp["location"]).query)
    assert back["state"] == [state]  # the core compares it with the stored state hash
    code = back["code"][0]

    wrong_verifier, _ = pkce_pair()
    with pytest.raises(UserError):
        factory().exchange_code(bare_context(em), code, wrong_verifier, redirect)
    # a code is single use: the failed attempt consumed it
    with pytest.raises(UserError):
        factory().exchange_code(bare_context(em), code, verifier, redirect)

    resp, _ = http.request(url, "GET")
    code = parse_qs(urlparse(resp["location"]).query)["code"][0]
    with pytest.raises(UserError):
        factory().exchange_code(bare_context(em), code, verifier, redirect + "/other")
    resp, _ = http.request(url, "GET")
    code = parse_qs(urlparse(resp["location"]).query)["code"][0]
    ctx = factory().exchange_code(bare_context(em), code, verifier, redirect)
    assert ctx.account == CAL and ctx.credentials["refresh_token"] in em.refresh_tokens


def test_expired_access_token_is_refreshed_and_written_back_once(em: GoogleEmulator) -> None:
    ctx = signed_in_context(em, CAL, expired=True)
    old = dict(ctx.credentials)
    connector = factory().connect(ctx)
    assert connector.list_calendars()
    assert em.counts["token:refresh_token"] == 1
    new = connector.credentials()
    assert new is not None and new["token"] != old["token"]
    assert new["refresh_token"] == old["refresh_token"]
    assert dt.datetime.fromisoformat(new["expiry"]) > dt.datetime.now(dt.timezone.utc)
    assert connector.credentials() is None  # nothing changed since it was handed out
    connector.list_calendars()
    assert em.counts["token:refresh_token"] == 1


def test_access_token_rejected_by_the_api_is_refreshed_and_retried(em: GoogleEmulator) -> None:
    connector = factory().connect(signed_in_context(em, CAL))
    connector.list_calendars()
    em.expire_access_tokens()  # Google answers 401 to the token calsync still holds
    assert [c.id for c in connector.list_calendars()] == [CAL]
    assert em.counts["token:refresh_token"] == 1
    assert connector.credentials() is not None


def test_revoked_refresh_token_means_needs_reauth_without_a_retry_storm(
        em: GoogleEmulator) -> None:
    sleeps: list[float] = []
    ctx = signed_in_context(em, CAL, expired=True, sleep=sleeps.append)
    em.revoke(ctx.credentials["refresh_token"])
    connector = factory().connect(ctx)
    with pytest.raises(NeedsReauth, match="calsync connect google"):
        connector.list_calendars()
    with pytest.raises(NeedsReauth):
        connector.changes(CAL, None, Window(dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc),
                                            dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)))
    assert em.counts["token:refresh_token"] == 1
    assert em.counts["api"] == 0
    assert sleeps == []


def test_401_even_after_refresh_means_needs_reauth(em: GoogleEmulator) -> None:
    sleeps: list[float] = []
    connector = factory().connect(signed_in_context(em, CAL, sleep=sleeps.append))
    em.fail_next(401, "authError", count=5)
    with pytest.raises(NeedsReauth):
        connector.list_calendars()
    # google-auth-httplib2 refreshes and replays a 401 at most twice, then gives up
    api_calls = em.counts["api"]
    assert (api_calls, em.counts["token:refresh_token"]) == (3, 2)
    with pytest.raises(NeedsReauth):
        connector.list_calendars()
    assert em.counts["api"] == api_calls and sleeps == []


def test_verify_names_the_account_and_lists_calendars(em: GoogleEmulator) -> None:
    em.add_calendar(CAL, "team@group.calendar.google.com", "Team", role="reader")
    ctx = signed_in_context(em, CAL)
    ctx = dataclasses.replace(ctx, account="")
    verified, calendars = factory().verify(ctx)
    assert verified.account == CAL
    assert {c.id for c in calendars} == {CAL, "team@group.calendar.google.com"}


def test_verify_with_revoked_sign_in_is_a_user_error(em: GoogleEmulator) -> None:
    ctx = signed_in_context(em, CAL, expired=True)
    em.revoke(ctx.credentials["refresh_token"])
    with pytest.raises(UserError, match="did not accept"):
        factory().verify(ctx)


def test_device_code_expiring_before_approval_is_a_user_error(em: GoogleEmulator) -> None:
    def sleep(_s: float) -> None:
        for entry in em.device_codes.values():
            entry["expires"] = 0.0  # the user never came

    with pytest.raises(UserError, match="expired"):
        factory().device_flow(bare_context(em, sleep=sleep), lambda _m: None)


def test_refresh_token_revoked_over_http_gives_invalid_grant(em: GoogleEmulator) -> None:
    ctx = signed_in_context(em, CAL, expired=True)
    http = httplib2.Http()
    resp, _ = http.request(f"{em.root}/revoke", "POST",
                           body=f"token={ctx.credentials['refresh_token']}",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 200
    resp, body = http.request(f"{em.root}/token", "POST", body=(
        f"grant_type=refresh_token&refresh_token={ctx.credentials['refresh_token']}"
        f"&client_id={em.client_id}&client_secret={em.client_secret}"),
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 400 and b"invalid_grant" in body
    with pytest.raises(NeedsReauth):
        factory().connect(ctx).list_calendars()


def test_device_flow_scope_refused_by_google_points_to_the_web_sign_in(
        em: GoogleEmulator) -> None:
    em.device_scopes = {"openid", "email", "profile"}  # Google's allowlist is short
    with pytest.raises(UserError, match="web sign-in") as err:
        factory().device_flow(bare_context(em), lambda _m: None)
    assert "/oauth/google/start?user_id=USER" in str(err.value)
    assert em.counts["token"] == 0
