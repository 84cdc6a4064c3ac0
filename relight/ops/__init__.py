"""What operators look at: read-only summaries across tenants, for the operators' page."""
