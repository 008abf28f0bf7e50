"""Hypothesis fuzz of the spec loader: any mutation of a valid spec either loads or gives one SpecError line
naming a field; never another exception, never a write."""
import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY_STUDY, store_files
from pipelines.spec import SpecError, parse_study
from pipelines.training.checks import check_deep

BASE = yaml.safe_load(TINY_STUDY)
FIELDS = ("name", "grid", "seeds", "train", "resources", "max_failures", "scheduler", "report", "profiles",
          "default_profile", "task", "experiment", "checkpoint_every", "description")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 64), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=8), st.sampled_from(["kappa", "relative", "none", "aa_resnet18", "cpu", "gpu",
                                                          "fifo", "asha", "synthetic", "fashion_mnist"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))


@st.composite
def mutated_specs(draw):
    spec = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(spec) if p]
        path = draw(st.sampled_from(paths)) if paths else ("name",)
        parent = spec
        for k in path[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            key = draw(st.one_of(st.sampled_from(FIELDS + ("kappa", "gpu", "epochs", "data")), st.text(max_size=6)))
            if isinstance(parent, dict):
                parent[key] = draw(values)
    return spec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(spec=mutated_specs())
def test_spec_loader_never_raises_anything_but_one_line(workdir, spec):
    before = store_files(workdir)
    try:  # parsing, then the checks that build networks and open datasets (as a launch runs them)
        check_deep(parse_study(spec, "cpu" if isinstance(spec.get("profiles"), dict) and "cpu" in spec["profiles"]
                               else None))
    except SpecError as e:
        msg = str(e)
        assert msg and "\n" not in msg and ":" in msg, msg
    assert store_files(workdir) == before


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_any_text_as_a_study_file_is_one_line(workdir, text):
    from pipelines.spec import load_study

    path = workdir / "fuzz.yaml"
    path.write_text(text)
    try:
        load_study(path, None)
    except SpecError as e:
        assert "\n" not in str(e)
