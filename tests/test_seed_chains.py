"""Chains written for the PLATO WP36 controller expand here to the values it computed.

The loop and expression parts below are copied from its ``demo_jobs/`` (earth_vs_size_psls.json,
detection_grid_2d.json); only the task types are swapped for ones this project ships, since the seed's
science types are not what is tested here. Expected values are worked out by hand from the seed's
constants (lengths in Jupiter radii: Rearth = 0.08911486) and numpy's linspace/logspace formulas.
"""

import json
import math
import os

import pytest
from conftest import PROJECT_ROOT

from eas_controller.chains import ChainError, evaluate_late_fields, expand_chain, expand_control_task
from eas_controller.registry import read_registries

KNOWN_TYPES = read_registries([os.path.join(PROJECT_ROOT, "tests", "task_types_test.yaml")])
REARTH = 0.08911486  # the seed's constants.Rearth, in Jupiter radii
LC = "'evsize_psls_{tda_index}_{cadence_index}_{size_index}.gz'.format(**metadata)"


def earth_vs_size_psls():
    """earth_vs_size_psls.json: tda x cadence x a 10-step log range of sizes from Rearth/4 to Rearth*4."""
    return {
        "job_name": "earth_vs_size_psls",
        "working_directory": "earth_vs_size_psls",
        "task_list": [{
            "task": "execution_for_loop", "parameter": "tda", "values": ["tls", "bls_reference"],
            "task_list": [{
                "task": "execution_for_loop", "parameter": "cadence", "values": [900, 25],
                "task_list": [{
                    "task": "execution_for_loop", "parameter": "size",
                    "log_range": ["(constants.Rearth / 4)", "(constants.Rearth * 4)", 10],
                    "task_list": [
                        {"task": "synthesise_lightcurve", "name": "lightcurve_synthesis", "outputs": {"lightcurve": LC},
                         "specs": {"duration": 730, "planet_radius": "(metadata['size'])", "orbital_period": 240,
                                   "semi_major_axis": 1, "orbital_angle": 0,
                                   "sampling_cadence": "(metadata['cadence'])"}},
                        {"task": "null", "name": "lightcurve_verification", "inputs": {"lightcurve": LC}},
                        {"task": "('measure_transit_depth' if metadata['tda'] == 'tls' else 'null')",
                         "name": "transit_detection", "inputs": {"lightcurve": LC}, "lc_duration": 730},
                    ]}]}]}],
    }


GRID = "'grid2d_{tda_index}_{cadence_index}_{size_index}_{period_index}_{impact_index}.gz'.format(**metadata)"


def detection_grid_2d(random_seed=None, sizes=24):
    """detection_grid_2d.json's loops and expressions, with one tda value instead of three."""
    chain = {
        "job_name": "detection_grid_2d",
        "working_directory": "detection_grid_2d",
        "task_list": [{
            "task": "execution_for_loop", "parameter": "tda", "values": ["tls"],
            "task_list": [{
                "task": "execution_for_loop", "parameter": "cadence", "values": [900],
                "task_list": [{
                    "task": "execution_for_loop", "parameter": "size",
                    "linear_range": ["(constants.Rearth * 0.25)", "(constants.Rearth * 2)", sizes],
                    "task_list": [{
                        "task": "execution_for_loop", "parameter": "period", "linear_range": [0.5, 380, 24],
                        "task_list": [{
                            "task": "execution_for_loop", "parameter": "impact", "linear_range": [0, 1, 12],
                            "task_list": [
                                {"task": "synthesise_lightcurve", "outputs": {"lightcurve": GRID},
                                 "specs": {"duration": 730, "planet_radius": "(metadata['size'])",
                                           "t0": "(random.random() * 200)",
                                           "orbital_period": "(metadata['period'])",
                                           "impact_parameter": "(metadata['impact'])",
                                           "semi_major_axis": "(pow(metadata['period']/365.25, 2/3))",
                                           "noise": 0, "mes_assume_noise": "(constants.plato_noise)",
                                           "sampling_cadence": "(metadata['cadence'])"}},
                                {"task": "null", "name": "lightcurve_verification", "inputs": {"lightcurve": GRID}},
                            ]}]}]}]}]}],
    }
    if random_seed is not None:
        chain["random_seed"] = random_seed
    return chain


def leaves(plan, task_type):
    return [node for node in plan.nodes if node.task_type == task_type]


def numpy_linspace(start, end, count):
    """What numpy.linspace returns, written out: i * step + start, the last value exactly end."""
    step = (end - start) / (count - 1)
    return [i * step + start for i in range(count - 1)] + [float(end)]


def test_earth_vs_size_log_range_is_in_jupiter_radii():
    plan = expand_chain(earth_vs_size_psls(), "earth_vs_size_psls.json", KNOWN_TYPES)
    synthesised = leaves(plan, "synthesise_lightcurve")
    assert len(synthesised) == 2 * 2 * 10
    sizes = [node.metadata["size"] for node in synthesised[:10]]
    # By hand: 10 radii from 0.022278715 to 0.35645944 Jupiter radii, each 16 ** (1/9) = 1.3608 times the last.
    assert math.isclose(sizes[0], 0.022278715, rel_tol=1e-15)
    assert math.isclose(sizes[-1], 0.35645944, rel_tol=1e-15)
    for index, size in enumerate(sizes):
        assert math.isclose(size, REARTH / 4 * 16 ** (index / 9), rel_tol=1e-13), index
    # Bit for bit what numpy.logspace(log10(Rearth / 4), log10(Rearth * 4), 10) gives.
    assert sizes == [10.0 ** exponent for exponent in numpy_linspace(math.log10(REARTH / 4), math.log10(REARTH * 4), 10)]
    assert all(size < 1 for size in sizes)  # planets smaller than Jupiter, not 10^7 metres
    for node in synthesised:
        assert node.description["specs"]["planet_radius"] == node.metadata["size"]
        assert node.description["specs"]["sampling_cadence"] == node.metadata["cadence"]
    assert [node.metadata["cadence"] for node in synthesised[::10]] == [900, 25, 900, 25]
    assert synthesised[13].outputs == {"lightcurve": "earth_vs_size_psls/evsize_psls_0_1_3.gz"}
    detections = [node for node in plan.nodes if node.name == "transit_detection"]
    assert [node.task_type for node in detections[::10]] == ["measure_transit_depth"] * 2 + ["null"] * 2


def test_earth_vs_size_dry_run_prints_the_radii(eas_sqlite, tmp_path):
    path = tmp_path / "earth_vs_size_psls.json"
    path.write_text(json.dumps(earth_vs_size_psls()))
    result = eas_sqlite.script("job_submission/submit.py", "--tasks", str(path), "--dry-run")
    assert "[tda=tls, cadence=900, size=0.0222787]" in result.stdout, result.stdout
    assert "size=0.356459]" in result.stdout and "nothing was written" in result.stdout


def test_detection_grid_linear_ranges_and_expressions():
    plan = expand_chain(detection_grid_2d(), "detection_grid_2d.json", KNOWN_TYPES)
    synthesised = leaves(plan, "synthesise_lightcurve")
    assert len(synthesised) == 24 * 24 * 12
    by_loop = {name: sorted({node.metadata[name] for node in synthesised}) for name in ("size", "period", "impact")}
    # By hand: sizes from Rearth/4 = 0.022278715 to 2 Rearth = 0.17822972 in 23 steps of 0.0067809568...
    assert by_loop["size"] == numpy_linspace(REARTH * 0.25, REARTH * 2, 24)
    assert math.isclose(by_loop["size"][1] - by_loop["size"][0], REARTH * 1.75 / 23, rel_tol=1e-12)
    assert by_loop["size"][0] == 0.022278715 and by_loop["size"][-1] == 0.17822972
    # periods 0.5 ... 380 days in steps of 379.5 / 23 = 16.5 days; impacts 0, 1/11, ... 1.0
    assert by_loop["period"] == [0.5 + 16.5 * i for i in range(24)]
    assert by_loop["impact"] == numpy_linspace(0, 1, 12) and by_loop["impact"][-1] == 1.0
    assert all(type(value) is float for values in by_loop.values() for value in values)
    node = synthesised[12 * 24 + 5 * 12 + 11]  # size_index 1, period_index 5, impact_index 11
    specs = node.description["specs"]
    assert (node.metadata["size_index"], node.metadata["period_index"], node.metadata["impact_index"]) == (1, 5, 11)
    assert specs["orbital_period"] == 83.0 and specs["impact_parameter"] == 1.0
    assert specs["semi_major_axis"] == pow(83.0 / 365.25, 2 / 3)
    assert specs["mes_assume_noise"] == 0.000315 and specs["sampling_cadence"] == 900
    assert node.outputs == {"lightcurve": "detection_grid_2d/grid2d_0_0_1_5_11.gz"}
    t0 = [node.description["specs"]["t0"] for node in synthesised]
    assert all(0 <= value < 200 for value in t0) and len(set(t0)) == len(t0)


def test_random_values_are_reproducible_with_a_seed_and_differ_without():
    def t0_values(chain):
        plan = expand_chain(chain, "grid.json", KNOWN_TYPES)
        return [node.description["specs"]["t0"] for node in leaves(plan, "synthesise_lightcurve")]

    seeded = t0_values(detection_grid_2d(random_seed=2021, sizes=1))
    assert len(seeded) == 24 * 12 and len(set(seeded)) == len(seeded)
    assert seeded == t0_values(detection_grid_2d(random_seed=2021, sizes=1))
    assert seeded != t0_values(detection_grid_2d(random_seed="2021", sizes=1))
    assert seeded != t0_values(detection_grid_2d(random_seed=2022, sizes=1))
    assert t0_values(detection_grid_2d(sizes=1)) != t0_values(detection_grid_2d(sizes=1))


def test_seeded_draws_do_not_depend_on_when_a_subtree_expands():
    """A branch expanded by the scheduler later draws the numbers it would have drawn at submission."""
    draw = {"task": "null", "name": "draw", "x": "(random.uniform(1, 2))", "n": "(random.randint(1, 6))",
            "g": "(random.gauss(0, 1))"}
    body = [{"task": "execution_for_loop", "parameter": "i", "values": [1, 2], "task_list": [draw]}]
    now = {"random_seed": 7, "task_list": [{"task": "null", "name": "first"},
                                           {"task": "execution_chain", "task_list": body}]}
    later = {"random_seed": 7, "task_list": [{"task": "null", "name": "first"},
                                             {"task": "execution_chain", "requires_metadata_from": ["first"],
                                              "task_list": body}]}
    immediate = [node.description for node in expand_chain(now, "a.json", KNOWN_TYPES).nodes if node.name == "draw"]
    deferred_plan = expand_chain(later, "b.json", KNOWN_TYPES)
    deferred = deferred_plan.nodes[2]
    assert deferred.task_type == "execution_chain" and not deferred.expanded
    row = {"id": 3, "task_type": deferred.task_type, "chain_path": deferred.chain_path, "job_name": "b",
           "working_directory": "", "description": json.loads(json.dumps(deferred.description)), "metadata": {},
           "priority": 0, "expansions": 0}
    plan, _finished = expand_control_task(row, KNOWN_TYPES, {"first": {}})
    expanded = [node.description for node in plan.nodes if node.name == "draw"]
    assert [(d["x"], d["n"], d["g"]) for d in expanded] == [(d["x"], d["n"], d["g"]) for d in immediate]
    assert 1 <= immediate[0]["x"] < 2 and immediate[0]["n"] in range(1, 7) and immediate[0]["x"] != immediate[1]["x"]


def test_seeded_draws_of_a_late_leaf_are_the_ones_it_would_have_had():
    reads = {"task": "null", "name": "late", "requires_metadata_from": ["first"],
             "x": "(random.random() + requested_metadata['first']['offset'])"}
    chain = {"random_seed": 5, "task_list": [{"task": "null", "name": "first"}, reads]}
    node = expand_chain(chain, "late.json", KNOWN_TYPES).nodes[2]
    assert node.needs_evaluation
    stored = json.loads(json.dumps(node.description))
    first = evaluate_late_fields(stored, {}, {"first": {"offset": 10}}, "where")
    again = evaluate_late_fields(stored, {}, {"first": {"offset": 10}}, "where")
    assert first == again and 10 <= first["x"] < 11 and "eas_random_seed" not in first


def test_keys_and_metadata_sources_are_evaluated_like_values():
    chain = {"task_list": [{
        "task": "execution_for_loop", "parameter": "i", "values": [1, 2],
        "task_list": [
            {"task": "null", "name": "('fit_%d' % metadata['i'])",
             "outputs": {"('curve_%d' % metadata['i'])": "('lc_%d.gz' % metadata['i'])"},
             "specs": {"('p%d' % metadata['i'])": "(metadata['i'] * 10)", " (1 + 1)": "x"}},
            {"task": "null", "name": "read", "requires_metadata_from": ["('fit_%d' % metadata['i'])"],
             "inputs": {"('curve_%d' % metadata['i'])": "('lc_%d.gz' % metadata['i'])"}},
        ]}]}
    plan = expand_chain(chain, "keys.json", KNOWN_TYPES)
    fits = [node for node in plan.nodes if (node.name or "").startswith("fit_")]
    assert [node.outputs for node in fits] == [{"curve_1": "lc_1.gz"}, {"curve_2": "lc_2.gz"}]
    assert fits[1].description["specs"] == {"p2": 20, "2": "x"}
    readers = [node for node in plan.nodes if node.name == "read"]
    assert [[source.name for source in node.metadata_from] for node in readers] == [["fit_1"], ["fit_2"]]
    assert [node.inputs for node in readers] == [{"curve_1": "lc_1.gz"}, {"curve_2": "lc_2.gz"}]


@pytest.mark.parametrize("task, message", [
    ({"task": "null", "specs": {"('a')": 1, "a": 2}}, "field 'specs.a': expression \"a\": gives the key 'a'"),
    ({"task": "null", "specs": {"([1])": 1}}, "field 'specs.([1])': expression \"([1])\": a key must be a string"),
    ({"task": "null", "requires_metadata_from": ["('nobody')"]},
     "field 'requires_metadata_from' names 'nobody', which is not an earlier sibling"),
    ({"task": "null", "requires_metadata_from": ["(1)"]},
     "field 'requires_metadata_from[0]' must give a task name (a string), not a number"),
])
def test_bad_keys_and_sources_name_the_field(task, message):
    with pytest.raises(ChainError) as caught:
        expand_chain({"task_list": [task]}, "job.json", KNOWN_TYPES)
    assert str(caught.value).startswith("job.json: task_list[0]"), str(caught.value)
    assert message in str(caught.value), str(caught.value)


@pytest.mark.parametrize("seed", [True, 1.5, [], "", "x" * 256])
def test_random_seed_must_be_a_number_or_a_string(seed):
    with pytest.raises(ChainError, match="job.json: field 'random_seed' must be a whole number or a string"):
        expand_chain({"random_seed": seed, "task_list": []}, "job.json", KNOWN_TYPES)
