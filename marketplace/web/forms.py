"""Forms for posting jobs. They build the same spec the REST API takes; the jobs service validates it again, and
its field errors are put back next to the form field they concern."""

from __future__ import annotations

import math
import statistics
from decimal import Decimal, InvalidOperation
from typing import Any

from django import forms
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from marketplace.jobs.models import Job, JobState, Result

TOKEN = 10**18
FEE_BPS = 250

# Product kinds a poster picks from; each brings its usual size range and palette.
PRODUCTS: dict[str, dict[str, Any]] = {
    "cereal": {"kind": "carton", "size_m": {"width": [0.15, 0.25], "height": [0.2, 0.3], "depth": [0.05, 0.08]},
               "palette": ["#d62828", "#f7f7f7", "#003049"]},
    "water": {"kind": "bottle", "size_m": {"width": [0.06, 0.09], "height": [0.2, 0.3]},
              "palette": ["#0077b6", "#ffffff"]},
    "soda": {"kind": "can", "size_m": {"width": [0.06, 0.07], "height": [0.11, 0.13]},
             "palette": ["#e63946", "#ffffff"]},
    "jam": {"kind": "jar", "size_m": {"width": [0.07, 0.09], "height": [0.09, 0.12]},
            "palette": ["#6a040f", "#ffba08"]},
    "chips": {"kind": "pouch", "size_m": {"width": [0.12, 0.18], "height": [0.18, 0.25], "depth": [0.03, 0.05]},
              "palette": ["#ffb703", "#023047"]},
}  # fmt: skip

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


def _tokens(base_units: int) -> str:
    whole, fraction = divmod(int(base_units), TOKEN)
    return f"{whole}.{fraction:018d}".rstrip("0").rstrip(".")


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
            return int(Decimal(self.cleaned_data["price"]) * TOKEN)
        except (InvalidOperation, KeyError, TypeError):
            return 0

    # Each kind's form defines spec() (the job's spec from its fields) and tasks() (how many tasks it makes).

    def seconds(self) -> float | None:
        return None

    def quote_text(self) -> str:
        if not self.is_bound or not self.is_valid():
            return "Fill in the form to see the quote."
        replication = int(self.cleaned_data.get("replication") or 1)
        base = self.price_base_units() * self.tasks() * replication
        fee = base * FEE_BPS // 10_000
        text = (
            f"{self.tasks()} tasks × {replication} replica(s) × {_tokens(self.price_base_units())} HWC = "
            f"{_tokens(base)} HWC + {FEE_BPS / 100:g} % fee = {_tokens(base + fee)} HWC"
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
            "catalog": [{"category": name, **PRODUCTS[name]} for name in data["products"]],
            "scene": scene,
            "output": {"resolution": [data["resolution"], data["resolution"]], "samples": data["samples"]},
            "seed": data["seed"],
            "images": data["images"],
            "chunk_size": data["chunk_size"],
        }

    def tasks(self) -> int:
        return math.ceil(self.cleaned_data["images"] / self.cleaned_data["chunk_size"])

    def seconds(self) -> float | None:
        """From recent accepted render results: seconds per image per megapixel-sample, scaled to this spec."""
        from marketplace.nodes.selectors import nodes_online

        rates = []
        for result in Result.objects.filter(
            assignment__task__job__kind="render", assignment__state="accepted"
        ).order_by("-created_at")[:30]:
            metrics, spec = result.metrics or {}, result.assignment.task.payload.get("spec") or {}
            width, height = (spec.get("output") or {}).get("resolution") or [0, 0]
            work = (metrics.get("images") or 0) * width * height * ((spec.get("output") or {}).get("samples") or 0)
            if metrics.get("seconds") and work:
                rates.append(float(metrics["seconds"]) / work)
        if not rates:
            return None
        data = self.cleaned_data
        work = data["images"] * data["resolution"] ** 2 * data["samples"] * int(data["replication"])
        nodes = max(1, len(list(nodes_online())))
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
            field.queryset = Job.objects.filter(poster=user, kind="render", state=JobState.COMPLETED).order_by(
                "-finished_at"
            )
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
        from marketplace.federated.models import RoundState, TrainRound

        walls = [
            float(r.metrics["wall_seconds"])
            for r in TrainRound.objects.filter(state=RoundState.CLOSED).order_by("-closed_at")[:20]
            if r.metrics.get("wall_seconds")
        ]
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
