"""Tests of the dashboard (views, live updates, a real browser)."""
