"""Users, jobs, time off and blocked events: validation of incoming records and the store."""
