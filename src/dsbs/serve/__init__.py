"""Stage 3: the student behind an autoscaled Ray Serve endpoint (entry: runner.serve_student)."""
