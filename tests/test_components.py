"""`_target_` components: importing a target, reading its signature, and the explicit-vs-inherited key rule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from diffquant.components import Component, choose_keys, explicit_keys, import_target, make_component, signature_of
from diffquant.errors import DiffquantError

SUPPLIED = {"in_channels": "the data's channels", "image_size": "the data's image size"}
OWN = ("_target_", "name", "checkpoint")


def net(in_channels: int, image_size: int, width: int = 8, *, depth: int = 2) -> None:
    """A stand-in constructor (never called here)."""


def needs_width(in_channels: int, width: int) -> None:
    """A constructor with a required setting."""


def any_kwargs(width: int = 8, **kwargs: object) -> None:
    """A constructor taking any keyword."""


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.width=4", "+model.depth=3", "++model.heads=2"], {"width", "depth", "heads"}),
        (["model=unet_small", "~model.dropout", "dataset.image_size=8", "quant.weight_bits=4"], set()),
        (["model._target_=a.B", "+model.layers.0=1"], {"_target_", "layers"}),
    ],
    ids=["set-append-force", "picks-deletes-other-groups", "target-and-nested"],
)
def test_explicit_keys_are_the_group_keys_set_on_the_command_line(overrides: list[str], expected: set[str]) -> None:
    assert explicit_keys(overrides, "model") == expected


def test_choose_keys_keeps_taken_keys_drops_inherited_ones_and_rejects_typed_ones() -> None:
    given = {"width": 4, "base_channels": 32, "groups": 8}
    kept, ignored = choose_keys("model", "pkg.Net", given, ["width", "depth"], explicit={"width"}, any_keyword=False)
    assert (kept, ignored) == ({"width": 4}, ["base_channels", "groups"])
    with pytest.raises(DiffquantError) as info:
        choose_keys("model", "pkg.Net", {"widht": 4}, ["width", "depth"], explicit={"widht"}, any_keyword=False)
    assert str(info.value) == "model.widht=4 is not a parameter of pkg.Net; did you mean model.width? it takes: width, depth"


def test_choose_keys_passes_typed_keys_to_a_target_taking_any_keyword() -> None:
    given = {"width": 4, "extra": 1, "base_channels": 32}
    kept, ignored = choose_keys("model", "pkg.Net", given, ["width"], explicit={"extra"}, any_keyword=True)
    assert (kept, ignored) == ({"width": 4, "extra": 1}, ["base_channels"])


def test_signature_lists_keyword_parameters_and_required_ones() -> None:
    sig = signature_of(net, "model._target_")
    assert (sig.names, sig.required, sig.any_keyword) == (
        ("in_channels", "image_size", "width", "depth"),
        ("in_channels", "image_size"),
        False,
    )
    assert signature_of(any_kwargs, "x").any_keyword


@pytest.mark.parametrize(
    ("path", "message"),
    [
        (
            "nopkg_xyz.Net",
            r"model\._target_=nopkg_xyz\.Net: no module named 'nopkg_xyz' \(is its package installed, or on PYTHONPATH\?\)",
        ),
        (
            "diffquant.models.unet.UNett",
            r"module 'diffquant\.models\.unet' has no attribute 'UNett'; did you mean diffquant\.models\.unet\.UNet\?",
        ),
        ("UNet", r"model\._target_='UNet' is not an import path; expected package\.module\.Name"),
        ("diffquant.models.unet.math", r"model\._target_=diffquant\.models\.unet\.math is a module, not a class or function"),
        (
            "broken_pkg_for_test.Net",
            r"importing module 'broken_pkg_for_test' failed \(ModuleNotFoundError: No module named 'torchx_missing'\)",
        ),
    ],
    ids=["no-module", "no-attribute", "not-a-path", "not-callable", "module-import-fails"],
)
def test_a_target_that_does_not_import_says_which_part_failed(
    path: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_pkg_for_test.py").write_text("import torchx_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "broken_pkg_for_test", raising=False)
    with pytest.raises(DiffquantError, match=message):
        import_target(path, "model._target_")


def test_make_component_names_a_missing_required_setting() -> None:
    node = {"_target_": f"{__name__}.needs_width", "name": "x"}
    with pytest.raises(DiffquantError, match=r"needs model\.width \(no default\); add \+model\.width=<value>"):
        make_component("model", node, set(), (), SUPPLIED, OWN)


def test_a_stale_inherited_name_gives_way_to_the_typed_target() -> None:
    node = {"_target_": f"{__name__}.net", "name": "unet_tiny", "width": 4, "checkpoint": None}
    spec = make_component("model", node, {"_target_"}, (), SUPPLIED, OWN)
    assert (spec.name, spec.kwargs, spec.supplied) == ("net", {"width": 4}, ("in_channels", "image_size"))
    assert make_component("model", node, set(), (), SUPPLIED, OWN).name == "unet_tiny"  # the file's own target


def test_the_key_is_the_target_and_every_argument_passed() -> None:
    a = Component("model", "pkg.A", {"width": 4}, supplied=("in_channels",))
    b = Component("model", "pkg.B", {"width": 4}, supplied=("in_channels",))
    assert a.key(in_channels=1, image_size=8) == {"_target_": "pkg.A", "width": 4, "in_channels": 1}  # image_size not taken
    assert a.key(in_channels=1) != b.key(in_channels=1)


def test_an_error_inside_the_target_is_one_line_naming_it() -> None:
    spec = Component("dataset", "builtins.int.from_bytes", {"bytes": "nope", "byteorder": "big"})
    with pytest.raises(DiffquantError, match=r"^dataset\._target_=builtins\.int\.from_bytes failed when called \(TypeError: "):
        spec.build()
