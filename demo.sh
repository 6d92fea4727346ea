#!/bin/sh
# The demo, end to end on the embedded default (SQLite file + SQL queue + local workers):
# set up .venv, initialise the database, run the detection grid demo_jobs/detection_grid.json (PSLS light
# curves of planets of 4 sizes at 2 cadences, verified, searched with BLS, detections confirmed with TLS) on
# two workers, print what ran and the detection table. Safe to re-run: each run is a new job.
set -e
cd "$(dirname "$0")"
./setup.sh
# The embedded database under ./data, whatever a settings file may say (and without changing it).
EAS_DB_URL="sqlite:///$(pwd)/data/eas.sqlite"
export EAS_DB_URL
(cd eas_controller/database_initialisation && ./init_schema.py --no-save)
cd eas_controller/job_submission
./run_local.py --tasks ../../demo_jobs/detection_grid.json --workers 2
