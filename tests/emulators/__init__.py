"""Loopback emulators of provider APIs (Microsoft Graph + identity, Google Calendar), started
by pytest fixtures on 127.0.0.1 (free port) and driven through the real client libraries."""
