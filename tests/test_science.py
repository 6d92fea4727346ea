"""The seed's science task types for real: each on its own (standalone runner, no database) and in a
pipeline (real workers through run_local.py). Light curves are short so each test takes seconds."""

import json
import os

import numpy as np

from conftest import PROJECT_ROOT
from eas_controller.tasks import lightcurve_files
from test_standalone import by_name, run_json

REARTH = 0.08911486  # Jupiter radii (the seed's unit of planet_radius)
SUN_IN_RJUP = 695500e3 / 71492e3
PLANET = {"planet_radius": 3 * REARTH, "orbital_period": 2.5, "semi_major_axis": 0.035, "t0": 1.2}
TLS_FAST = {"period_min": 1, "period_max": 4, "oversampling_factor": 2}


def run_chain(tmp_path, tasks: list, expect_rc: int = 0) -> dict:
    path = tmp_path / "chain.json"
    path.write_text(json.dumps({"job_name": "science", "task_list": tasks}))
    return by_name(run_json(tmp_path, str(path), expect_rc))


def product(tmp_path, name: str) -> lightcurve_files.LightCurve:
    return lightcurve_files.read(str(tmp_path / "data" / name))


def dip(curve, t0: float, period: float, half_width: float = 0.02) -> float:
    """Mean out-of-transit flux minus mean flux near mid-transit."""
    phase = (curve.times - t0 + period / 2) % period - period / 2
    return float(np.mean(curve.fluxes[np.abs(phase) > 0.2]) - np.mean(curve.fluxes[np.abs(phase) < half_width]))


def test_psls_light_curve_read_back(tmp_path):
    tasks = run_chain(tmp_path, [
        {"task": "synthesis_psls", "name": "planet", "outputs": {"lightcurve": "planet.gz"},
         "specs": dict(PLANET, duration=10, sampling_cadence=600, master_seed=11)},
        {"task": "synthesis_psls", "name": "quiet", "outputs": {"lightcurve": "quiet.gz"},
         "specs": {"duration": 5, "sampling_cadence": 300, "enable_transits": 0, "master_seed": 12}},
    ])
    planet, quiet = product(tmp_path, "planet.gz"), product(tmp_path, "quiet.gz")
    assert len(planet.times) == 10 * 86400 // 600 and round(planet.sampling_interval() * 86400) == 600
    assert len(quiet.times) == 5 * 86400 // 300 and round(quiet.sampling_interval() * 86400) == 300
    expected_depth = (3 * REARTH / SUN_IN_RJUP) ** 2  # 750 ppm
    assert 0.7 * expected_depth < dip(planet, 1.2, 2.5) < 1.4 * expected_depth  # the transit is where t0 says
    assert abs(dip(quiet, 1.2, 2.5)) < 0.2 * expected_depth
    assert 20 < np.std(quiet.fluxes) * 1e6 < 500  # PLATO noise plus granulation and oscillations, in ppm
    metadata = tasks["planet"]["metadata"]
    assert metadata["planet_injected"] is True and metadata["mes"] > 10 and metadata["master_seed"] == 11
    assert tasks["quiet"]["metadata"]["mes"] == 0 and planet.metadata["orbital_period"] == 2.5


def test_batman_light_curve_read_back(tmp_path):
    tasks = run_chain(tmp_path, [
        {"task": "synthesis_batman", "name": "clean", "outputs": {"lightcurve": "clean.gz"},
         "specs": dict(PLANET, duration=10, sampling_cadence=1800)},
        {"task": "synthesis_batman", "name": "noisy", "outputs": {"lightcurve": "noisy.txt"},
         "specs": dict(PLANET, duration=4, sampling_cadence=600, noise=0.000315)},
    ])
    clean, noisy = product(tmp_path, "clean.gz"), product(tmp_path, "noisy.txt")
    assert len(clean.times) == 480 and round(clean.sampling_interval() * 86400) == 1800
    assert len(noisy.times) == 576 and round(noisy.sampling_interval() * 86400) == 600
    ratio_squared = (3 * REARTH / SUN_IN_RJUP) ** 2
    assert 0.9 * ratio_squared < 1 - clean.fluxes.min() < 1.3 * ratio_squared  # limb darkening deepens the centre
    assert np.all(clean.fluxes <= 1) and abs(clean.times[np.argmin(clean.fluxes)] % 2.5 - 1.2) < 0.05
    expected_noise = 0.000315 * np.sqrt(25 / 600)
    out_of_transit = np.abs((noisy.times - 1.2 + 1.25) % 2.5 - 1.25) > 0.2
    assert 0.8 * expected_noise < np.std(noisy.fluxes[out_of_transit]) < 1.25 * expected_noise
    assert tasks["clean"]["metadata"]["pixels_in_transit"] == int(np.count_nonzero(clean.fluxes < 1))


def test_tls_and_bls_recover_a_three_earth_radius_planet_and_fail_on_a_flat_curve(tmp_path):
    noise = {"noise": 0.000315, "duration": 10, "sampling_cadence": 600}
    search = {"lc_duration": 10}
    tasks = run_chain(tmp_path, [
        {"task": "synthesis_batman", "outputs": {"lightcurve": "planet.gz"}, "specs": dict(PLANET, **noise)},
        {"task": "synthesis_psls", "outputs": {"lightcurve": "flat.gz"},  # a star with no planet, fixed noise
         "specs": {"enable_transits": 0, "duration": 10, "sampling_cadence": 600, "master_seed": 5}},
        {"task": "transit_search_tls", "name": "tls", "inputs": {"lightcurve": "planet.gz"},
         "search_settings": TLS_FAST, **search},
        {"task": "transit_search_tls", "name": "tls_flat", "inputs": {"lightcurve": "flat.gz"}, "injected_period": 2.5,
         "search_settings": TLS_FAST, **search},
        {"task": "transit_search_bls_reference", "name": "bls", "inputs": {"lightcurve": "planet.gz"},
         "outputs": {"debugging": "bls.tar.gz"}, **search},
        {"task": "transit_search_bls_reference", "name": "bls_flat", "inputs": {"lightcurve": "flat.gz"},
         "injected_period": 2.5, **search},
    ])
    for name in ("tls", "bls"):
        found = tasks[name]["metadata"]
        assert found["outcome"] == "PASS" and abs(found["period"] - 2.5) < 0.025, (name, found)
        assert 400e-6 < found["depth"] < 1200e-6 and 0.03 < found["duration"] < 0.2 and found["snr"] > 10
        assert found["injected_period"] == 2.5
        flat = tasks[name + "_flat"]["metadata"]
        assert flat["outcome"] == "FAIL" and abs(flat["period"] - 2.5) > 0.025 and flat["snr"] < found["snr"] / 3
    assert tasks["tls"]["metadata"]["sde"] > 7 and tasks["tls"]["metadata"]["transit_count"] >= 3
    assert os.path.getsize(tmp_path / "data" / "bls.tar.gz") > 100


def test_multiply_verify_and_binning(tmp_path):
    tasks = run_chain(tmp_path, [
        {"task": "synthesis_psls", "outputs": {"lightcurve": "star.gz"},
         "specs": {"duration": 6, "sampling_cadence": 600, "enable_transits": 0, "master_seed": 3}},
        {"task": "synthesis_batman", "outputs": {"lightcurve": "planet.gz"},
         "specs": dict(PLANET, duration=6, sampling_cadence=300)},
        {"task": "multiply", "inputs": {"lightcurve_1": "star.gz", "lightcurve_2": "planet.gz"},
         "outputs": {"lightcurve": "injected.gz"}},
        {"task": "verify", "name": "verify", "inputs": {"lightcurve": "injected.gz"}},
        {"task": "binning", "name": "binning", "inputs": {"lightcurve": "injected.gz"},
         "outputs": {"lightcurve": "binned.gz"}, "cadence": 1800},
        {"task": "transit_search_bls_reference", "name": "bls", "inputs": {"lightcurve": "binned.gz"}},
    ])
    star, injected, binned = (product(tmp_path, name) for name in ("star.gz", "injected.gz", "binned.gz"))
    assert len(injected.times) == len(star.times) - 2  # resampling drops the first and last samples
    assert 0.6 * (3 * REARTH / SUN_IN_RJUP) ** 2 < dip(injected, 1.2, 2.5) and injected.metadata["planet_injected"]
    verified = tasks["verify"]["metadata"]
    assert verified["verification"] is True
    assert abs(verified["verification_time_max"] - injected.times.max()) < 1e-6
    assert verified["verification_flux_min"] == injected.fluxes.min()
    assert round(binned.sampling_interval() * 86400) == 1800 and abs(len(binned.times) - 6 * 48) <= 1
    assert tasks["binning"]["metadata"]["points"] == len(binned.times)
    assert tasks["bls"]["metadata"]["outcome"] == "PASS"


def test_ingest_external_lcs_from_the_input_directory(tmp_path):
    folder = tmp_path / "data" / "input" / "lightcurves_v2" / "csvs" / "bright"
    folder.mkdir(parents=True)
    for number in (1, 2):
        (folder / ("plato_bright%04d.csv" % number)).write_text(
            "# #star_id=%d\n0.0,1.0,0\n0.01,0.999,0\n0.02,1.001,1\n" % number)
    tasks = run_chain(tmp_path, [{"task": "ingest_external_lcs", "name": "ingest", "lc_type": "lcsg",
                                  "input_path": "lightcurves_v2/csvs/bright/plato_bright*",
                                  "input_dir": str(tmp_path / "data" / "input")}])
    metadata = tasks["ingest"]["metadata"]
    assert metadata["ingested_count"] == 2
    curve = lightcurve_files.read(os.path.join(metadata["ingest_directory"], "plato_bright0002.gz"))
    assert list(curve.fluxes) == [1.0, 0.999, 1.001] and curve.metadata["star_id"] == 2
    assert abs(curve.times[1] * 86400 - 864) < 1e-6 and list(curve.flags) == [0, 0, 1]


def test_science_pipeline_on_real_workers(eas_sqlite, tmp_path):
    """Synthesise -> verify -> search -> a follow-up only on detections, through the database and two workers;
    the detection table has a PASS row (3 Earth radii) and a FAIL row (a planet too small to see)."""
    cell = lambda size, index: [  # noqa: E731
        {"task": "synthesis_psls", "name": "lightcurve_synthesis", "outputs": {"lightcurve": "lc_%d.gz" % index},
         "specs": dict(PLANET, planet_radius=size, duration=8, sampling_cadence=600, master_seed=20 + index)},
        {"task": "verify", "name": "lightcurve_verification", "inputs": {"lightcurve": "lc_%d.gz" % index}},
        {"task": "transit_search_bls_reference", "name": "transit_detection", "inputs": {"lightcurve": "lc_%d.gz" % index},
         "lc_duration": 8},
        {"task": "execution_conditional", "requires_metadata_from": ["transit_detection"],
         "criterion": "(requested_metadata['transit_detection']['outcome'] == 'PASS')",
         "task_list": [{"task": "transit_search_tls", "name": "confirmation", "inputs": {"lightcurve": "lc_%d.gz" % index},
                        "search_settings": {"period_min": "(requested_metadata['transit_detection']['period'] * 0.97)",
                                            "period_max": "(requested_metadata['transit_detection']['period'] * 1.03)"}}]},
    ]
    chain = {"job_name": "science_pipeline", "working_directory": "science", "task_list": [
        {"task": "execution_for_loop", "parameter": "size", "values": [3 * REARTH], "task_list": cell(3 * REARTH, 0)},
        {"task": "execution_for_loop", "parameter": "size", "values": [0.1 * REARTH], "task_list": cell(0.1 * REARTH, 1)},
    ]}
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(chain))
    result = eas_sqlite.script("job_submission/run_local.py", "--tasks", str(path), "--workers", "2", "--timeout", "240")
    table = result.stdout[result.stdout.index("detections"):]
    rows = [line for line in table.splitlines() if "bls_reference" in line]
    assert len(rows) == 2, table
    assert "PASS" in rows[0] and "3.00" in rows[0] and "tls PASS" in rows[0], table
    assert "FAIL" in rows[1] and "0.10" in rows[1] and rows[1].rstrip().endswith("-"), table
    assert "products (light curves, search results) under %s" % os.path.join(eas_sqlite.settings.data_dir, "science") in result.stdout
    tree = json.loads(eas_sqlite.script("diagnostics/display_job_tree.py", "--format", "json").stdout)
    confirmations = [row for row in tree if row["task_type"] == "transit_search_tls"]
    assert len(confirmations) == 1 and confirmations[0]["metadata"]["outcome"] == "PASS"
    assert os.path.isfile(os.path.join(eas_sqlite.settings.data_dir, "science", "lc_1.gz"))


def test_qats_is_refused_plainly_on_a_worker(eas_sqlite, tmp_path):
    path = tmp_path / "qats.json"
    path.write_text(json.dumps({"task_list": [
        {"task": "transit_search_qats", "inputs": {"lightcurve": "lc.gz"}, "lc_duration": 5},
        {"task": "synthesis_batman", "outputs": {"lightcurve": "lc.gz"}, "specs": dict(PLANET, duration=5)}]}))
    result = eas_sqlite.script("job_submission/run_local.py", "--tasks", str(path), "--workers", "1", check=False)
    assert result.returncode == 1 and "not available here" in result.stdout, result.stdout


def test_every_demo_job_expands_with_the_shipped_types():
    """Short demo jobs (and the main one) expand fully: every task type they name is shipped and every file
    they read has a producer. A full-size job (up to 10^5 tasks) must pass validation and have a short twin of
    the same shape (same loops and task types, fewer values)."""
    from eas_controller.chains import expand_chain, validate_chain
    from eas_controller.registry import read_registries

    known = read_registries([]).keys()
    root = os.path.join(PROJECT_ROOT, "demo_jobs")

    def load(path):
        with open(path) as handle:
            return json.load(handle)

    def shape(node):
        if isinstance(node, dict):
            return tuple((key, shape(value)) for key, value in sorted(node.items())
                         if key in ("task", "parameter", "task_list", "else_task_list"))
        if isinstance(node, list):
            return tuple(shape(item) for item in node)
        return node

    checked = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            if not name.endswith(".json") or relative.startswith("standalone"):
                continue
            chain = load(path)
            twin = os.path.join(root, "short", relative)
            if not relative.startswith("short") and os.path.exists(twin):
                validate_chain(chain, relative, known)
                assert shape(chain) == shape(load(twin)), relative
            else:
                assert expand_chain(chain, relative, known).worker_tasks, relative
            checked += 1
    assert checked >= 39


def test_short_seed_jobs_run_with_the_shipped_types(tmp_path):
    """Two short seed shapes end to end on the standalone runner: a conditional follow-up and a do-while that
    repeats a search while it succeeds (every short job was run this way once; these two stay in the suite)."""
    short = os.path.join(PROJECT_ROOT, "demo_jobs", "short", "feature_tests")
    for name in ("if_then_else.json", "while_loop.json"):
        report = run_json(tmp_path, os.path.join(short, name))
        assert {task["state"] for task in report["tasks"]} == {"succeeded"}, name
        searches = [task for task in report["tasks"] if task["task_type"].startswith("transit_search_")]
        assert searches and all(task["metadata"]["outcome"] in ("PASS", "FAIL") for task in searches)
        if name == "if_then_else.json":  # sizes 1/8, 1, 8 Earth radii: each took exactly one branch
            outcomes = [task["metadata"]["outcome"] for task in searches]
            branches = [task["task_name"] for task in report["tasks"] if task["task_type"] == "null"]
            assert len(branches) == outcomes.count("PASS") + 3 * outcomes.count("FAIL") and "PASS" in outcomes
        if name == "while_loop.json":  # a search that succeeds is repeated, up to 3 passes
            passes = [task for task in searches if task["metadata"]["outcome"] == "PASS"]
            assert len(searches) > 3 and passes
