"""Every contract of the platform: table records, job configs and results, API models."""
