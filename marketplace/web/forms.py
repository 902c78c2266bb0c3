"""Forms for posting jobs. They build the same spec the REST API takes; the jobs service validates it again, and
its field errors are put back next to the form field they concern."""

from __future__ import annotations

import math
import statistics
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from contracts.units import tokens_format, tokens_parse
from marketplace.core.samples import PRODUCTS, catalog
from marketplace.jobs.models import Job
from marketplace.payments import selectors as payment_selectors
from marketplace.payments.services import funding_for
from marketplace.web import selectors

# Form field for each spec path the jobs service may name in an error.
SPEC_FIELDS = {
    "spec.images": "images",
    "spec.chunk_size": "chunk_size",
    "spec.output.resolution": "resolution",
    "spec.output.samples": "samples",
    "spec.seed": "seed",
    "spec.catalog": "products",
    "spec.dataset.job": "dataset",
    "spec.model": "model",
    "spec.rounds": "rounds",
    "spec.participants": "participants",
    "spec.local_steps": "local_steps",
    "spec.learning_rate": "learning_rate",
    "spec.target_accuracy": "target_accuracy",
    "price_per_replica": "price",
    "replication": "replication",
}


def field_for(path: str, form: forms.Form) -> str | None:
    for prefix, name in SPEC_FIELDS.items():
        if (path == prefix or path.startswith(prefix + ".")) and name in form.fields:
            return name
    return None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(1, round(seconds))} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {seconds / 3600:.1f} h"


class JobForm(forms.Form):
    price = forms.DecimalField(
        label="Price per task replica (HWC)", min_value=Decimal("0.000001"), max_digits=30, decimal_places=18,
        initial=Decimal("0.1"),
    )  # fmt: skip

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        for field in self.fields.values():
            css = "form-select" if isinstance(field.widget, forms.Select) else "form-control"
            if isinstance(field.widget, forms.CheckboxSelectMultiple):
                continue
            field.widget.attrs.setdefault("class", css)

    def price_base_units(self) -> int:
        try:
            return tokens_parse(self.cleaned_data["price"])
        except (KeyError, ValueError):
            return 0

    # Each kind's form defines spec() (the job's spec from its fields) and tasks() (how many tasks it makes).

    def seconds(self) -> float | None:
        return None

    def quote_text(self) -> str:
        """price × tasks × replication plus the escrow's fee on it (as the job page's funding amount), and the
        estimated duration. With no chain to ask for the fee, the default rate, and the quote says so."""
        if not self.is_bound or not self.is_valid():
            return "Fill in the form to see the quote."
        replication = int(self.cleaned_data.get("replication") or 1)
        base = self.price_base_units() * self.tasks() * replication
        fee = payment_selectors.escrow_fee()
        total = funding_for(
            price_per_replica=self.price_base_units(), replicas=self.tasks() * replication, fee_bps=fee.bps
        )
        rate = f"{fee.bps / 100:g} % fee"
        if not fee.read:
            rate += " (the default rate: no chain answered with the escrow's)"
        text = (
            f"{self.tasks()} tasks × {replication} replica(s) × {tokens_format(self.price_base_units())} HWC = "
            f"{tokens_format(base)} HWC + {rate} = {tokens_format(total)} HWC"
        )
        seconds = self.seconds()
        if seconds is not None:
            text += f"; estimated duration {_duration(seconds)} at the network's measured speed"
        return text


class RenderJobForm(JobForm):
    products = forms.MultipleChoiceField(
        choices=[(name, f"{name} ({p['kind']})") for name, p in PRODUCTS.items()],
        initial=list(PRODUCTS),
        widget=forms.CheckboxSelectMultiple,
        help_text="Each becomes one COCO category.",
    )
    scene = forms.ChoiceField(choices=[("shelf", "Shelf with rows of facings"), ("table", "Table top, scattered")])
    images = forms.IntegerField(min_value=1, max_value=1_000_000, initial=12)
    chunk_size = forms.IntegerField(label="Images per task", min_value=1, max_value=256, initial=4)
    resolution = forms.IntegerField(label="Resolution (square, pixels)", min_value=32, max_value=4096, initial=160)
    samples = forms.IntegerField(label="Cycles samples", min_value=1, max_value=4096, initial=8)
    seed = forms.IntegerField(min_value=0, initial=2026)
    replication = forms.IntegerField(min_value=1, max_value=5, initial=2, help_text="Nodes that render each chunk.")

    field_order = ["products", "scene", "images", "chunk_size", "resolution", "samples", "seed", "replication", "price"]

    def spec(self) -> dict[str, Any]:
        data = self.cleaned_data
        scene: dict[str, Any] = {"template": data["scene"]}
        if data["scene"] == "shelf":
            scene["shelf"] = {"rows": [2, 3], "width_m": 0.9}
        return {
            "catalog": catalog(data["products"]),
            "scene": scene,
            "output": {"resolution": [data["resolution"], data["resolution"]], "samples": data["samples"]},
            "seed": data["seed"],
            "images": data["images"],
            "chunk_size": data["chunk_size"],
        }

    def tasks(self) -> int:
        return math.ceil(self.cleaned_data["images"] / self.cleaned_data["chunk_size"])

    def seconds(self) -> float | None:
        """From recent accepted render results: seconds per image per pixel-sample, scaled to this spec and spread
        over the nodes online."""
        rates = selectors.render_seconds_per_work()
        if not rates:
            return None
        data = self.cleaned_data
        work = data["images"] * data["resolution"] ** 2 * data["samples"] * int(data["replication"])
        nodes = max(1, selectors.nodes_online_count())
        return statistics.median(rates) * work / nodes


class TrainJobForm(JobForm):
    dataset = forms.ModelChoiceField(queryset=Job.objects.none(), help_text="One of your completed render jobs.")
    model = forms.ChoiceField(choices=[("smallcnn", "Small CNN"), ("resnet18", "ResNet-18")])
    image_size = forms.IntegerField(label="Crop size (pixels)", min_value=16, max_value=128, initial=24)
    rounds = forms.IntegerField(min_value=1, max_value=200, initial=4)
    participants = forms.IntegerField(label="Nodes per round", min_value=1, max_value=32, initial=2)
    local_steps = forms.IntegerField(min_value=1, max_value=10_000, initial=40)
    batch_size = forms.IntegerField(min_value=1, max_value=1024, initial=16)
    optimizer = forms.ChoiceField(choices=[("sgd", "SGD with momentum"), ("adam", "Adam")])
    learning_rate = forms.FloatField(min_value=1e-6, max_value=10, initial=0.05)
    compression = forms.ChoiceField(
        choices=[("int8", "int8"), ("none", "none (float32)"), ("fp16", "fp16"), ("topk", "top-k 1 % + error feedback"),
                 ("powersgd", "PowerSGD rank 4")]
    )  # fmt: skip
    aggregation = forms.ChoiceField(
        choices=[("fedavg", "FedAvg"), ("median", "Coordinate-wise median"), ("trimmed_mean", "Trimmed mean")]
    )
    target_accuracy = forms.FloatField(min_value=0, max_value=1, required=False, help_text="Stop early at this.")
    round_deadline_seconds = forms.IntegerField(label="Round deadline (s)", min_value=5, max_value=86_400, initial=120)

    field_order = ["dataset", "model", "image_size", "rounds", "participants", "local_steps", "batch_size",
                   "optimizer", "learning_rate", "compression", "aggregation", "target_accuracy",
                   "round_deadline_seconds", "price"]  # fmt: skip

    def __init__(self, *args: Any, user: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, user=user, **kwargs)
        if user is not None:
            field = self.fields["dataset"]
            assert isinstance(field, forms.ModelChoiceField)
            field.queryset = selectors.render_datasets_of(poster=user)
            field.label_from_instance = (
                lambda job: (  # type: ignore[method-assign]
                    f"{str(job.id)[:8]} · {job.spec.get('images')} images · finished {job.finished_at:%Y-%m-%d %H:%M}"
                )
            )
        self.fields["price"].initial = Decimal("0.1")

    def spec(self) -> dict[str, Any]:
        data = self.cleaned_data
        spec = {
            "dataset": {"job": str(data["dataset"].id)},
            **{k: data[k] for k in ("model", "image_size", "rounds", "participants", "local_steps", "batch_size",
                                    "optimizer", "learning_rate", "aggregation", "round_deadline_seconds")},
            "compression": {"name": data["compression"]},
        }  # fmt: skip
        if data.get("target_accuracy") is not None:
            spec["target_accuracy"] = data["target_accuracy"]
        return spec

    def tasks(self) -> int:
        return int(self.cleaned_data["rounds"]) * int(self.cleaned_data["participants"])

    def seconds(self) -> float | None:
        walls = selectors.train_round_seconds()
        return statistics.median(walls) * int(self.cleaned_data["rounds"]) if walls else None


def _styled(form: forms.Form) -> None:
    for field in form.fields.values():
        field.widget.attrs.setdefault("class", "form-control")


class SignupForm(UserCreationForm):  # type: ignore[type-arg]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _styled(self)


class LoginForm(AuthenticationForm):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _styled(self)
