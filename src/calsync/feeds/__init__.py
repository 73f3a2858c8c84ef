"""Per-user iCalendar feeds: link signing, per-item ICS fragments, the feed service."""
