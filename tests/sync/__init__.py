"""Tests of localbroker.sync against real Redis and MongoDB servers."""
