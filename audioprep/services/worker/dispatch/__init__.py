"""Fair dispatch (docs/fairness.md): one worker process at a time holds the lease and releases
waiting requests to the workers round-robin across tenants."""
