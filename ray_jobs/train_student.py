"""Stage 2: train the T5 student with Ray Train + DeepSpeed ZeRO; resumable after any failure.

Locally (starts a Ray cluster when none is running):
    python ray_jobs/train_student.py --config configs/local-demo.yaml

On a cluster (a `ray start --head`, or KubeRay through a port-forward to 8265):
    ray job submit --address http://127.0.0.1:8265 --working-dir . \
        -- python ray_jobs/train_student.py \
        --config configs/paper/svamp_palm_to_t5-v1_1-xxl_8gpu.yaml

Any `key=value` after the config overrides it (`train.zero_stage=3 train.max_steps=500`).
Reads the run's generate output, or `train.data`; writes RUN/train/<hash>/ (checkpoints,
student/ export, metrics). A rerun of the same config resumes from its latest checkpoint.
The same function runs behind `dsbs train`.
"""

import sys

from dsbs.cli import main

if __name__ == "__main__":  # Ray Train spawns workers: no work at import time
    sys.exit(main(["train", *sys.argv[1:]]))
