"""Two-way sync: the Connector protocol, the pure planner, and the runner."""
