"""Event types used across the broker tests."""

from localbroker import Command, Event


class UserCreated(Event, topic="user.created"):
    user_id: str
    name: str


class UserRenamed(Event, topic="user.renamed"):
    user_id: str
    name: str


class CreateUser(Command, topic="user.create"):
    name: str


class Note(Event, topic="note.added"):
    n: int
