"""Factories for every model, shared by the app test folders."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.authtoken.models import Token

from marketplace.jobs.models import Assignment, Job, Task
from marketplace.nodes.authentication import token_new
from marketplace.nodes.models import Node


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.test")

    @factory.post_generation
    def token(self, create: bool, extracted: Any, **kwargs: Any) -> None:
        if create:
            Token.objects.get_or_create(user=self)


class JobFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Job

    poster = factory.SubFactory(UserFactory)
    kind = "benchmark"
    spec = factory.LazyFunction(lambda: {"tasks": 3, "matrix_size": 16, "seed": 7})
    price_per_replica = 10**18
    replication = 2
    task_count = 3
    quote = factory.LazyAttribute(lambda j: j.price_per_replica * j.task_count * j.replication)
    deadline = factory.LazyFunction(lambda: timezone.now() + timedelta(days=1))


class TaskFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Task

    job = factory.SubFactory(JobFactory)
    index = factory.Sequence(lambda n: n)
    payload = factory.LazyAttribute(lambda t: {"matrix_size": 16, "seed": 7, "index": t.index})
    requirements = factory.LazyFunction(lambda: {"cpu_cores": 1})


class NodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Node

    operator = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"rig-{n}")
    wallet_address = factory.Sequence(lambda n: f"0x{n:040x}")
    token_hash = factory.LazyFunction(lambda: token_new()[1])
    last_heartbeat = factory.LazyFunction(timezone.now)


class AssignmentFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Assignment

    task = factory.SubFactory(TaskFactory)
    node = factory.SubFactory(NodeFactory)
    start_by = factory.LazyFunction(lambda: timezone.now() + timedelta(minutes=1))
    lease_expires_at = factory.LazyFunction(lambda: timezone.now() + timedelta(minutes=10))
