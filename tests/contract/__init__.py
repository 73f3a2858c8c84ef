"""The shared connector contract suite (same tests for every provider backend)."""
