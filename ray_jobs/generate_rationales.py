"""Stage 1: teacher rationales for every input, resumable and exactly once.

Locally (starts a Ray cluster when none is running):
    python ray_jobs/generate_rationales.py --config configs/local-demo.yaml

On a cluster (a `ray start --head`, or KubeRay through a port-forward to 8265):
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python ray_jobs/generate_rationales.py --config configs/local-demo.yaml pipeline.run_dir=s3://bucket/runs/demo

Any `key=value` after the config overrides it (`generate.num_samples=5 teacher.temperature=0.7`).
The same function runs behind `dsbs generate`.
"""

import sys

from dsbs.cli import main

if __name__ == "__main__":  # vLLM spawns processes: no work at import time
    sys.exit(main(["generate", *sys.argv[1:]]))
