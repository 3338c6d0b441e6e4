"""The whole pipeline: generate -> train -> evaluate -> report -> serve smoke test.

Locally (starts a Ray cluster when none is running):
    python ray_jobs/distill_pipeline.py --config configs/local-demo.yaml

On a cluster (a `ray start --head`, or KubeRay through a port-forward to 8265):
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python ray_jobs/distill_pipeline.py --config configs/local-demo.yaml \
        pipeline.run_dir=s3://bucket/runs/demo

Any `key=value` after the config overrides it. Stages already done for the same config are
skipped, so resubmitting a failed job picks up where it stopped. Writes RUN/report/index.html.
The same function runs behind `dsbs run`.
"""

import sys

from dsbs.cli import main

if __name__ == "__main__":  # vLLM and Ray Train spawn processes: no work at import time
    sys.exit(main(["run", *sys.argv[1:]]))
