"""Configuration, the admin API, metrics and status."""
