"""fusedopt's throughput benchmark (`python -m fusedopt bench`), installed as fusedopt.benchmarks.

workloads.py   the parameter lists that are stepped (one flat tensor, a GPT-like list, many tiny
               tensors), with deterministic shapes
optimizers.py  which optimizers and implementations get rows, and each one's bytes model; the
               end-to-end train-loop rows (AMP unscale + clip + AdamW + lr schedule)
bench.py       the command: interleaved timing, measured memory bandwidth, table, CSV
plot.py        the bar chart of achieved GB/s (``--plot``)
"""
