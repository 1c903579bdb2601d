"""Tier sealed segments to S3 and read them back (filled by the archive issue)."""
