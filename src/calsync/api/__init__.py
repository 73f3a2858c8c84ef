"""The HTTP API: feeds, platform endpoints, OAuth callbacks, webhooks."""
