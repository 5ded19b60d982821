"""`flask seed`, `flask staff create`; the engine adds its own commands."""

from __future__ import annotations

import sys

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import select

from app.db_tx import write_transaction
from app.models import Product, StaffUser

DEMO_PRODUCTS = [
    ("espresso-beans", "Espresso beans, 1 kg", "Dark roast, whole beans.", 2400, "usd"),
    ("pour-over-kit", "Pour-over kit", "Dripper, 100 filters and a glass server.", 4500, "usd"),
    ("ceramic-mug", "Ceramic mug", "350 ml, dishwasher safe.", 1800, "usd"),
    ("gift-card-50", "Gift card", "Fifty dollars to spend in the store.", 5000, "usd"),
    ("grinder-eur", "Hand grinder", "Conical steel burrs.", 8900, "eur"),
    ("matcha-jpy", "Matcha, 100 g", "Ceremonial grade (priced in yen, a zero-decimal currency).", 3200, "jpy"),
    ("dates-kwd", "Medjool dates, 1 kg", "Priced in Kuwaiti dinar, a three-decimal currency.", 4750, "kwd"),
]


def seed_products() -> int:
    """Insert the demo products that are missing; returns how many were added."""
    added = 0
    with write_transaction() as session:
        existing = set(session.scalars(select(Product.handle)))
        for handle, title, description, amount, currency in DEMO_PRODUCTS:
            if handle not in existing:
                session.add(
                    Product(handle=handle, title=title, description=description, unit_amount=amount, currency=currency)
                )
                added += 1
    return added


def upsert_staff(email: str, password: str) -> bool:
    """Create the staff user or reset its password; True when created."""
    with write_transaction() as session:
        user = session.scalar(select(StaffUser).where(StaffUser.email == email))
        created = user is None
        if created:
            user = StaffUser(email=email)
            session.add(user)
        user.set_password(password)
        user.failed_logins = 0
        user.locked_until = None
    return created


def init_app(app: Flask) -> None:
    @app.cli.command("seed")
    def seed_command() -> None:
        """Add the demo products (idempotent)."""
        added = seed_products()
        click.echo(f"seeded {added} product(s)")

    staff = AppGroup("staff", help="Staff users of the dashboard.")

    @staff.command("create")
    @click.argument("email")
    @click.option("--password-stdin", is_flag=True, required=True, help="Read the password from standard input.")
    def staff_create(email: str, password_stdin: bool) -> None:
        """Create or update a staff user; the password is read from standard input."""
        password = sys.stdin.readline().rstrip("\r\n")
        email = email.strip().lower()
        if "@" not in email:
            raise click.BadParameter("not an email address", param_hint="EMAIL")
        if len(password) < 8:
            raise click.ClickException("the password must be at least 8 characters")
        created = upsert_staff(email, password)
        click.echo(f"{'created' if created else 'updated'} staff user {email}")

    app.cli.add_command(staff)
    init_webhook_commands(app)


def init_webhook_commands(app: Flask) -> None:
    from app.models import WebhookEvent
    from app.webhooks.processing import ProcessingFailed, process_event

    webhooks = AppGroup("webhooks", help="Stored Stripe webhook events.")

    @webhooks.command("replay")
    @click.argument("event_id")
    def replay(event_id: str) -> None:
        """Process a stored event again (handlers are idempotent)."""
        from app.extensions import db

        if db.session.get(WebhookEvent, event_id) is None:
            raise click.ClickException(f"no stored event {event_id}")
        try:
            process_event(event_id, force=True)
        except ProcessingFailed as exc:
            raise click.ClickException(f"processing failed again: {exc}") from None
        click.echo(f"processed {event_id}")

    @webhooks.command("failed")
    @click.option("--limit", default=50, show_default=True)
    def failed(limit: int) -> None:
        """List events whose processing failed and has not succeeded since."""
        from app.extensions import db

        rows = db.session.scalars(
            select(WebhookEvent)
            .where(WebhookEvent.processed_at.is_(None), WebhookEvent.last_error.is_not(None))
            .order_by(WebhookEvent.received_at)
            .limit(limit)
        ).all()
        for row in rows:
            first_line = (row.last_error or "").splitlines()[0][:120] if row.last_error else ""
            click.echo(f"{row.id}\t{row.type}\tattempts={row.attempts}\t{row.received_at.isoformat()}\t{first_line}")
        click.echo(f"{len(rows)} failed event(s)")

    app.cli.add_command(webhooks)
