"""Spec validation, deterministic planning and the device decision, all without Blender."""

from __future__ import annotations

import pytest

from synthetic.device import choose_device
from synthetic.plan import image_seed, plan_image
from synthetic.spec import SpecError, validate_spec
from tests.synthetic.helpers import small_spec


def test_errors_name_the_field_path() -> None:
    bad = small_spec(output={"resolution": [8, 128], "passes": ["rgb", "albedo"]}, images=0)
    bad["catalog"][0]["palette"] = ["red"]
    bad["scene"] = {"template": "shelf", "shelf": {"rows": [4, 2]}, "colour": "x"}
    with pytest.raises(SpecError) as info:
        validate_spec(bad)
    paths = {path for path, _ in info.value.errors}
    assert {
        "output.resolution[0]",
        "output.passes[1]",
        "images",
        "catalog[0].palette[0]",
        "scene.shelf.rows",
        "scene.colour",
    } <= paths
    assert "output.resolution[0]" in str(info.value)


def test_asset_paths_cannot_leave_the_job_assets() -> None:
    for path in ("../secret.glb", "/etc/x.glb", "model.obj"):
        spec = small_spec()
        spec["catalog"][5]["path"] = path
        with pytest.raises(SpecError, match=r"catalog\[5\]\.path"):
            validate_spec(spec)


def test_instance_pass_is_required() -> None:
    with pytest.raises(SpecError, match="instance"):
        validate_spec(small_spec(output={"passes": ["rgb"]}))


def test_normals_are_an_opt_in_pass() -> None:
    assert "normals" not in validate_spec(small_spec()).output.passes
    spec = validate_spec(small_spec(output={"passes": ["instance", "normals"]}))
    assert spec.output.passes == ["instance", "normals"]


def test_an_image_plan_depends_only_on_spec_seed_and_index() -> None:
    spec = validate_spec(small_spec())
    assert plan_image(spec, 3) == plan_image(validate_spec(small_spec()), 3)
    assert plan_image(spec, 3) != plan_image(spec, 4)
    assert plan_image(spec, 3) != plan_image(validate_spec(small_spec(seed=12)), 3)
    assert image_seed(11, 3) == image_seed(11, 3) != image_seed(11, 4)


def test_both_templates_place_products_of_the_catalog() -> None:
    for template in ("shelf", "table"):
        spec = validate_spec(small_spec(scene={"template": template}))
        plan = plan_image(spec, 0)
        assert plan.products, template
        assert {p.category for p in plan.products} <= set(spec.categories())
        assert [p.instance_id for p in plan.products] == list(range(1, len(plan.products) + 1))


def test_device_choice_prefers_optix_then_cuda_then_cpu() -> None:
    # Injected device lists: this machine has no GPU, so the real GPU branch is not exercised here.
    assert choose_device({"OPTIX": ["RTX 4090"], "CUDA": ["RTX 4090"]}) == ("OPTIX", ["RTX 4090"])
    assert choose_device({"OPTIX": [], "CUDA": ["GTX 1080"]}) == ("CUDA", ["GTX 1080"])
    assert choose_device({}) == ("NONE", [])
    assert choose_device({"CUDA": ["GTX 1080"]}, "cpu") == ("NONE", [])


def test_the_bpy_free_modules_import_without_blender() -> None:
    import subprocess
    import sys

    code = (
        "import sys, synthetic, synthetic.cli, synthetic.show, synthetic.plan, synthetic.textures, synthetic.geometry,"
        " synthetic.normals, synthetic.png16;"
        "assert 'bpy' not in sys.modules, 'bpy was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
