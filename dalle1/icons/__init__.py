"""The icon benchmark on real drawings: the object x style grid with held-out cells (data.py),
the classifier that judges what a picture shows (judge.py), and the benchmark that scores a
pipeline with it (benchmark.py). Its layout follows dalle1/shapes/."""
