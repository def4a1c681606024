"""What a run reports: metrics rows and W&B, plots, throughput, redaction of secrets."""
