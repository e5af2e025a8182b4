"""Tests of reservoir_depth.distributions.spec: DistributionSpec's checks, its dict form and draw versions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distribution_cases import FAMILIES
from reservoir_depth.distributions import DEFAULT_VERSION, DISTRIBUTIONS, DistributionSpec, as_spec, sample


def test_unknown_distribution_name():
    with pytest.raises(ValueError) as err:
        DistributionSpec("gausian")
    msg = str(err.value)
    assert "gausian" in msg and "normal" in msg and "orthogonal" in msg
    with pytest.raises(ValueError, match="gausian"):
        sample("gausian", (3, 3), 0)


def test_unknown_parameter():
    with pytest.raises(ValueError, match="sigma"):
        DistributionSpec("normal", {"sigma": 2.0})
    with pytest.raises(ValueError, match="densty"):
        DistributionSpec("sparse_normal", {"densty": 0.2})


def test_unknown_scaling():
    with pytest.raises(ValueError, match="fan_out"):
        DistributionSpec("normal", scaling="fan_out")


@pytest.mark.parametrize("kw", [{"gain": -1.0}, {"rho": float("nan")}, {"gain": float("inf")}, {"rho": -0.5}])
def test_invalid_gain_or_rho(kw):
    with pytest.raises(ValueError):
        DistributionSpec("normal", **kw)


@pytest.mark.parametrize("name", FAMILIES)
def test_spec_dict_round_trip(name):
    spec = DistributionSpec(name)
    d = spec.to_dict()
    back = DistributionSpec.from_dict(json.loads(json.dumps(d)))
    assert back == spec and back.to_dict() == d
    assert as_spec(d) == spec and as_spec(name) == spec and as_spec(spec) is spec
    np.testing.assert_array_equal(sample(back, (6, 5), 7), sample(spec, (6, 5), 7))


def test_spec_dict_round_trip_non_defaults():
    spec = DistributionSpec(
        "gaussian_mixture",
        {"means": (np.float64(-2.0), 0.0, 3.0), "stds": (1.0, 0.5, 0.25), "weights": (1, 2, 1)},
        scaling="spectral_radius",
        gain=0.5,
        rho=1.3,
    )
    d = spec.to_dict()
    text = json.dumps(d)
    assert d["params"]["means"] == [-2.0, 0.0, 3.0] and isinstance(d["params"]["stds"], list)
    assert d["scaling"] == "spectral_radius" and d["gain"] == 0.5 and d["rho"] == 1.3
    back = DistributionSpec.from_dict(json.loads(text))
    assert back == spec
    np.testing.assert_array_equal(sample(back, (9, 9), 1), sample(spec, (9, 9), 1))


def test_as_spec_string():
    spec = as_spec("normal")
    assert isinstance(spec, DistributionSpec)
    assert spec.name == "normal" and spec.scaling == "fan_in" and spec.gain == 1.0


def test_numpy_gain_is_accepted_and_json_safe():
    spec = DistributionSpec("normal", gain=np.float32(2.0), rho=np.float64(0.5))
    assert type(spec.gain) is float and json.dumps(spec.to_dict())
    with pytest.raises(ValueError, match="gain"):
        DistributionSpec("normal", gain=True)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_center_removes_the_family_mean(name):
    if name == "cauchy":
        with pytest.raises(ValueError, match="finite mean"):
            DistributionSpec(name, center=True)
        return
    spec = DistributionSpec(name, center=True, scaling="none")
    raw = sample(DistributionSpec(name, scaling="none"), (200, 200), 3)
    w = sample(spec, (200, 200), 3)
    np.testing.assert_allclose(w, raw - spec.mean)
    ref = spec.family.reference
    if ref is not None:
        sd = float(ref(**spec.params).std())
        assert abs(w.mean()) < 5 * sd / 200  # 4e4 draws: the mean is within 5 standard errors of 0
    assert "center" not in DistributionSpec(name).to_dict()  # old specs keep their serialisation
    assert DistributionSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="center"):
        DistributionSpec(name, center=1)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("student_t", {"df": float("inf")}, r"parameter df=inf of distribution 'student_t' is not allowed: "
                                            r"df must be a finite number > 0"),
        ("student_t", {"df": "3"}, r"parameter df='3' .*df must be a finite number > 0"),
        ("gaussian_mixture", {"means": (float("nan"), 1.0)}, r"parameter means=\(nan, 1.0\) .*list of finite numbers"),
        ("gaussian_mixture", {"weights": 0.5}, r"weights must be a list of finite numbers >= 0"),
        ("lognormal", {"sigma": float("nan")}, r"sigma must be a finite number > 0"),
        ("quantized_normal", {"clip": "3"}, r"clip must be a finite number > 0"),
        ("quantized_normal", {"bits": 4.0}, r"bits must be one of the ints 1, 2, 3, 4, 8, 16"),
        ("beta", {"a": None}, r"parameter a=None of distribution 'beta'"),
        ("uniform", {"low": True}, r"low must be a finite number < high"),
        ("sparse_normal", {"p": [0.1]}, r"p must be a number in \(0, 1\]"),
    ],
)
def test_parameters_of_the_wrong_type_or_not_finite(name, params, match):
    with pytest.raises(ValueError, match=match):
        DistributionSpec(name, params)


def test_version_in_the_spec_dict():
    assert DistributionSpec("normal").version == DEFAULT_VERSION == 2 and as_spec("normal").version == 2
    legacy = {"name": "normal", "params": {}, "scaling": "fan_in", "gain": 1.0, "rho": 0.95}
    old = DistributionSpec.from_dict(legacy)
    assert old.version == 1 and old.to_dict() == legacy  # stored run ids and hashes do not change
    assert as_spec(dict(legacy)).version == 2  # what a user writes without a version is the current draw
    new = DistributionSpec("normal")
    assert new.to_dict() == {**legacy, "version": 2} and DistributionSpec.from_dict(new.to_dict()) == new
    assert not np.array_equal(sample(old, (5, 5), 1), sample(new, (5, 5), 1))


@pytest.mark.parametrize("bad", [0, 3, "2", 2.0, True, None])
def test_unknown_draw_version(bad):
    with pytest.raises(ValueError, match=r"draw version must be one of \(1, 2\)"):
        DistributionSpec("normal", version=bad)


def test_what_a_user_writes_without_a_version_is_the_current_draw_and_a_stored_dict_is_version_1():
    from reservoir_depth.distributions import DEFAULT_VERSION, as_spec
    from reservoir_depth.scaffold import ScaffoldConfig
    from reservoir_depth.study import Study

    assert DEFAULT_VERSION == 2
    assert as_spec({"name": "normal"}).version == DEFAULT_VERSION
    assert ScaffoldConfig(spec={"name": "normal"}).spec.version == DEFAULT_VERSION
    assert ScaffoldConfig(specs={"x": {"name": "normal"}}).specs["x"].version == DEFAULT_VERSION
    study = Study.from_dict({"study": "s", "dataset": "digits", "seeds": [0], "arch": {"name": "mlp"}, "ranks": [1],
                             "scaffold": {"spec": {"name": "normal"}}})
    assert study.runs()[0].scaffold_config().spec.version == DEFAULT_VERSION
    # the stored form omits version 1: reading it back keeps the draw the file was made with
    assert DistributionSpec.from_dict({"name": "normal"}).version == 1
    assert DistributionSpec.from_dict(DistributionSpec("normal", version=1).to_dict()).version == 1
    assert as_spec({"name": "normal", "version": 1}).version == 1


def test_as_spec_refuses_what_is_not_a_spec():
    from reservoir_depth.distributions import as_spec

    with pytest.raises(TypeError, match="family name or a dict"):
        as_spec(3)
