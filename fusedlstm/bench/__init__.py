"""Benchmarks of fusedlstm against torch.nn.LSTM: the one definition of every
case, used by both `fusedlstm bench` and the pytest-benchmark suite in
benchmarks/.

    cases.py        shapes, modes, dtypes and providers: what is measured
    workloads.py    models, inputs and the timed call of one (case, provider)
    timing.py       warm-up, repetitions, timers, peak memory
    runner.py       every (case, provider) in turn, into result records
    isolated.py     timing one (case, provider) in a fresh process (--isolate)
    environment.py  machine and version metadata of a run
    report.py       markdown table, results.json, plot of the ratios
    cli.py          `fusedlstm bench` and `fusedlstm bench-table`
"""
