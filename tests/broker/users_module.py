"""A module of an application declared on a router: no broker is imported or created here."""

from __future__ import annotations

from localbroker import DeliveryContext, Event, Router
from tests.versioned import UserRegistered, upcasters


class WelcomeSent(Event, topic="mail.welcome_sent"):
    """The welcome mail went out."""

    to: str


router = Router()
router.include_router(upcasters)


@router.subscriber("user.*", name="welcome")
async def welcome(event: UserRegistered, ctx: DeliveryContext) -> None:
    await ctx.broker.publish(WelcomeSent(to=event.email))


@router.subscriber("mail.*", name="audit")
def audit(event: Event) -> None:
    """A plain def handler: it runs in a thread of its own."""
