"""Stage 2: student training with Ray Train and DeepSpeed (entry: trainer.train_student)."""
