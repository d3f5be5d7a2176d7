"""The generic registry behind step kinds, episode builders and dynamics metrics."""

from __future__ import annotations

import sys

import pytest

from metapretrain.registry import Registry


@pytest.fixture
def widget_modules(tmp_path, monkeypatch):
    """A registry whose built-in entries register when their module is imported, as the project's do."""
    (tmp_path / "widget_registry.py").write_text(
        "from metapretrain.registry import Registry\nREG = Registry('widget', modules=['widget_builtins'])\n")
    (tmp_path / "widget_builtins.py").write_text("from widget_registry import REG\nREG.add('builtin', 'B')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("widget_registry", "widget_builtins"):
        sys.modules.pop(name, None)


def test_register_lookup_duplicates_and_lazy_loading(widget_modules):
    from widget_registry import REG as reg

    @reg.register_class("a")
    class A:
        pass

    assert A.name == "a" and reg.lookup("a") is A
    assert "widget_builtins" not in sys.modules  # a registered name needs no loading
    reg.register_class("a")(A)  # the same class again (a module imported twice) is fine

    class Other:
        pass

    with pytest.raises(ValueError, match=r"widget 'a' is registered twice \(.*A, .*Other\)"):
        reg.register_class("a")(Other)
    assert reg.lookup("builtin") == "B" and "widget_builtins" in sys.modules
    with pytest.raises(KeyError, match="unknown widget 'zzz'; known: a, builtin"):
        reg.lookup("zzz")
    assert reg.names() == ["a", "builtin"]


def test_identity_decides_what_counts_as_the_same_entry():
    reg = Registry("metric", identity=lambda entry: entry[0])

    def fn():
        pass

    reg.add("m", (fn, "first record"))
    reg.add("m", (fn, "rebuilt record of the same function"))
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("m", (print, "another function"))


def test_the_project_registries_use_it():
    from metapretrain.dynamics.registry import known_metrics
    from metapretrain.meta.registry import episode_builder
    from metapretrain.train.steps import StepKind, known_step_kinds, step_kind

    assert {"next_token", "fomaml", "maml2", "reptile", "maml_ntp"} <= set(known_step_kinds())
    assert step_kind("fomaml").name == "fomaml"
    with pytest.raises(TypeError, match="abstract"):  # a step kind must implement run
        type("NoRun", (StepKind,), {})(None)
    with pytest.raises(KeyError, match="unknown step kind 'nope'; known: .*fomaml"):
        step_kind("nope")
    with pytest.raises(KeyError, match="unknown meta.episode.builder 'nope'"):
        episode_builder("nope")
    assert {"effective_rank", "head_entropy", "cka", "weight_norm"} <= set(known_metrics())
