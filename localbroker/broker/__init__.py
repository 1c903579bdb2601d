"""The broker: publishing, delivery to subscribers, the DLQ and chains."""
