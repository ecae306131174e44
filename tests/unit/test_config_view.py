"""ConfigSlice: reading within declared dotted sections works like the dict; anything else raises."""
import pytest

from telegen.config import defaults
from telegen.config.view import ConfigSlice, UndeclaredConfigKey


def test_reads_inside_declared_sections_and_leaves_like_the_dict():
    config = defaults()
    view = ConfigSlice(config, ["agent.ebpf", "self_telemetry.listen"])
    assert view["agent"]["ebpf"]["network"]["exclude_ports"] == config["agent"]["ebpf"]["network"]["exclude_ports"]
    assert view["self_telemetry"]["listen"] == config["self_telemetry"]["listen"]
    assert dict(view["agent"]["ebpf"]["network"]) == config["agent"]["ebpf"]["network"]
    assert list(view) == ["agent", "self_telemetry"] and list(view["self_telemetry"]) == ["listen"]
    assert len(view["agent"]) == 1


@pytest.mark.parametrize("read", [
    lambda v: v["telegen"],
    lambda v: v["agent"]["host_metrics"],
    lambda v: v["self_telemetry"]["auth"],
    lambda v: v["self_telemetry"].get("auth"),            # .get() does not hide it behind a default
])
def test_anything_else_raises_naming_the_key(read):
    view = ConfigSlice(defaults(), ["agent.ebpf", "self_telemetry.listen"])
    with pytest.raises(UndeclaredConfigKey, match="is not among the sections this child declared"):
        read(view)


def test_equality_compares_only_what_is_declared():
    one, two = defaults(), defaults()
    two["otlp"]["endpoint"] = "elsewhere:4317"
    assert ConfigSlice(one, ["agent.ebpf"]) == ConfigSlice(two, ["agent.ebpf"])
    assert ConfigSlice(one, ["otlp"]) != ConfigSlice(two, ["otlp"])
    two["agent"]["ebpf"]["network"]["include_ports"] = [(80, 80)]
    assert ConfigSlice(one, ["agent.ebpf"]) != ConfigSlice(two, ["agent.ebpf"])
