"""Mirror the local log to Redis Streams and MongoDB (filled by the sync issue)."""
