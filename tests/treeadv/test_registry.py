"""The one re-registration rule every plug-in registry follows (treeadv.registry)."""

from __future__ import annotations

import pytest

from treeadv.registry import Registry, RegistryError, registrations_undone


def make_class():
    class Plugin:  # the same module and qualified name each call: a plugin file loaded again
        pass

    return Plugin


def test_a_new_name_is_added_and_looked_up() -> None:
    registry: Registry[int] = Registry("thing", field="model.thing")
    assert registry.add("a", 1) == 1
    assert registry["a"] == 1 and "a" in registry and len(registry) == 1 and registry.names() == ["a"]


def test_a_different_entry_under_a_taken_name_raises_unless_replace() -> None:
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(RegistryError, match="thing 'a' is already registered"):
        registry.add("a", 2)
    assert registry["a"] == 1
    registry.add("a", 2, replace=True)
    assert registry["a"] == 2


def test_the_same_entry_or_its_redefinition_replaces_silently() -> None:
    registry: Registry[type] = Registry("loss")
    first, again = make_class(), make_class()
    assert first is not again
    registry.add("plugin", first)
    registry.add("plugin", first)
    registry.add("plugin", again)
    assert registry["plugin"] is again


def test_an_unknown_name_names_the_field_and_the_known_names() -> None:
    registry: Registry[int] = Registry("thing", field="model.thing")
    registry.add("b", 1)
    registry.add("a", 2)
    with pytest.raises(RegistryError, match=r"^model.thing: expected one of a, b, got 'c'$"):
        registry["c"]
    assert registry.remove("a") == 2 and registry.names() == ["b"]


def test_registrations_made_inside_are_undone_on_exit() -> None:
    registry: Registry[int] = Registry("thing")
    registry.add("kept", 1)
    with registrations_undone():
        registry.add("temporary", 2)
        registry.add("kept", 3, replace=True)
        assert registry.names() == ["kept", "temporary"]
    assert registry.items() == [("kept", 1)]


def test_a_class_from_the_same_file_under_another_module_name_is_a_redefinition(tmp_path) -> None:
    import runpy

    plugin = tmp_path / "plugin.py"
    plugin.write_text("class Loss:\n    def forward(self):\n        return 1\n")
    registry: Registry[type] = Registry("loss")
    registry.add("mine", runpy.run_path(str(plugin), run_name="as_plugin")["Loss"])
    registry.add("mine", runpy.run_path(str(plugin), run_name="__main__")["Loss"])  # the same file run as a script
    other = tmp_path / "other.py"
    other.write_text("class Loss:\n    def forward(self):\n        return 2\n")
    with pytest.raises(RegistryError, match="already registered"):
        registry.add("mine", runpy.run_path(str(other), run_name="as_plugin")["Loss"])
