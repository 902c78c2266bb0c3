"""`python manage.py token USERNAME [--create]`: print a user's API token, making the user if asked."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Print USERNAME's API token (for 'Authorization: Token …'), creating the token if it has none."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="the user whose token to print")
        parser.add_argument("--create", action="store_true", help="create the user if it does not exist")

    def handle(self, *args: Any, username: str, create: bool, **options: Any) -> None:
        users = get_user_model().objects
        user = users.filter(username=username).first()
        if user is None:
            if not create:
                raise CommandError(f"No user {username!r}; pass --create to make one.")
            user = users.create_user(username=username)
            user.set_unusable_password()
            user.save()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
