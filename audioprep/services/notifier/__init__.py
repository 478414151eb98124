"""The notifier: terminal job events → signed, retried Standard Webhooks deliveries."""
