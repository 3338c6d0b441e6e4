"""Stage 3: serve the exported student over HTTP with Ray Serve, until stopped.

Locally (starts a Ray cluster when none is running; answers on 127.0.0.1:8000):
    python ray_jobs/serve_student.py --config configs/local-demo.yaml

On a cluster (a `ray start --head`, or KubeRay through a port-forward to 8265):
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python ray_jobs/serve_student.py --config configs/local-demo.yaml \
        serve.model=s3://bucket/run/train/HASH/student serve.host=0.0.0.0

Any `key=value` after the config overrides it. Serves `serve.model`, else the run's current
`train/<hash>/student/`; `ray job stop` (SIGTERM) deletes the app. For a long-lived endpoint
use a RayService carrying configs/serve_student.yaml instead. Runs behind `dsbs serve`.
"""

import sys

from dsbs.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
