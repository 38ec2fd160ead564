"""The benchmark harness (fusedlstm.bench, `fusedlstm bench`, benchmarks/):
valid cases, random inputs, equal models across providers, timing that
leaves the untimed part out, peak memory, and the CLI end to end on the tiny
shapes. Benchmarks themselves are not run here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from fusedlstm import backends, cli
from fusedlstm.bench import cases, report, timing, workloads
from fusedlstm.bench.cases import BASELINE, SHAPES
from lstm_testing import assert_close

ROOT = Path(__file__).resolve().parents[1]
TINY = ("tiny", "tiny-packed", "tiny-generate", "tiny-inference")


def cpu_backends():
    return backends.available_backends("cpu")


def test_shapes_are_consistent():
    for name, shape in SHAPES.items():
        assert shape.name == name
        assert shape.kind in ("sequence", "packed", *cases.INFERENCE_KINDS)
        assert shape.steps >= 1 and shape.batch >= 1
        assert all(i >= 1 and h >= 1 and layers >= 1 for i, h, layers in shape.stack)
        # Each module takes the previous one's output.
        assert all(nxt[0] == prev[1] for prev, nxt in zip(shape.stack, shape.stack[1:])), name
        assert set(shape.modes) <= set(cases.MODES)
        if shape.kind == "packed":
            assert 1 <= shape.min_length <= shape.steps
        if shape.kind in cases.INFERENCE_KINDS:
            assert shape.modes == ("forward",)


def test_default_shapes_are_the_recorded_ones():
    # The shapes of every recorded run (README, benchmarks/RESULTS.md): a changed
    # size would make new figures incomparable with the recorded ones.
    dims = {name: SHAPES[name].dims() for name in cases.default_shapes()}
    assert dims == {
        "fastrnns": "T=100 B=64 I=512 H=512",
        "char": "T=100 B=32 I=64 H=256 L=2",
        "blog": "T=100 B=64 I=1 H=1000 then H=800",
        "small-b1": "T=1000 B=1 I=64 H=256",
        "small-b8": "T=1000 B=8 I=64 H=256",
        "small-h128": "T=1000 B=8 I=64 H=128",
        "packed": "T=10..100 B=64 I=64 H=256 L=2",
        "generate": "1 step B=1 I=64 H=256 L=2",
        "eval-t35": "T=35 B=10 I=128 H=128 L=2",
        "token-b1": "T=1 B=1 I=128 H=128 L=2",
    }


@pytest.mark.parametrize("name", list(SHAPES))
def test_inputs_are_random_and_never_zero(name):
    shape = SHAPES[name]
    leaf, module_input = workloads.make_input(shape, torch.float32, "cpu")
    # Standard normal draws (an exact 0.0 turns up once in millions).
    assert (leaf == 0).float().mean() < 1e-5
    assert 0.5 < leaf.std().item() < 1.5
    if shape.kind == "generate":
        assert leaf.shape == (shape.batch, shape.input_size)
        return
    if shape.kind == "inference":
        assert leaf.shape == (shape.steps, shape.batch, shape.input_size) and not leaf.requires_grad
        return
    assert leaf.requires_grad
    if shape.kind == "sequence":
        assert leaf.shape == (shape.steps, shape.batch, shape.input_size)
        return
    assert isinstance(module_input, PackedSequence) and module_input.data is leaf
    assert module_input.sorted_indices is not None  # unsorted lengths, enforce_sorted=False
    batch_sizes = module_input.batch_sizes
    # Every sequence is at least min_length long and at most `steps`.
    assert batch_sizes[shape.min_length - 1] == shape.batch == batch_sizes[0]
    assert len(batch_sizes) <= shape.steps
    assert leaf.shape == (int(batch_sizes.sum()), shape.input_size)


def test_inputs_do_not_depend_on_the_provider_or_call():
    shape = SHAPES["tiny-packed"]
    first, _ = workloads.make_input(shape, torch.float32, "cpu")
    second, _ = workloads.make_input(shape, torch.float32, "cpu")
    assert torch.equal(first, second)


def test_default_providers_put_the_baseline_first_and_leave_reference_out():
    providers = cases.providers("cpu")
    assert providers[0] == BASELINE
    assert "reference" not in providers
    assert providers[1:] == [b for b in cpu_backends() if b != "reference"]
    assert cases.providers("cpu", ["reference"]) == [BASELINE, "reference"]


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("provider", [BASELINE, *cpu_backends()])
def test_every_provider_computes_nn_lstms_forward(name, provider):
    case = cases.Case(SHAPES[name], "forward", torch.float32, "cpu")
    expected = workloads.build(case, BASELINE).forward_output()
    actual = workloads.build(case, provider).forward_output()
    assert_close(actual, expected, torch.float32, f"{provider} on {name}")


@pytest.mark.parametrize("name", ("tiny", "tiny-packed"))
@pytest.mark.parametrize("mode", cases.MODES)
def test_the_timed_call_does_what_its_mode_says(name, mode):
    """Backward runs in the timed call, and only in the modes that have one;
    "backward" gets its forward from the untimed prepare()."""
    case = cases.Case(SHAPES[name], mode, torch.float32, "cpu")
    modules = workloads.provider_modules(case.shape, BASELINE, case.dtype, "cpu")
    leaf, module_input = workloads.make_input(case.shape, case.dtype, "cpu")
    workload = workloads.sequence_workload(case, modules, leaf, module_input)
    tensors = [leaf, *(p for m in modules for p in m.parameters())]
    arg = workload.prepare()
    assert all(t.grad is None for t in tensors)
    if mode == "backward":
        assert isinstance(arg, torch.Tensor) and arg.grad_fn is not None
    result = workload.run(arg)
    if mode == "forward":
        assert isinstance(result, torch.Tensor) and result.grad_fn is not None
        assert all(t.grad is None for t in tensors)
    else:
        assert all(t.grad is not None and (t.grad != 0).any() for t in tensors)
        workload.prepare()  # gradients start afresh before every call
        assert all(t.grad is None for t in tensors)


@pytest.mark.parametrize("name", ["tiny-generate", "tiny-inference"])
@pytest.mark.parametrize("provider", [BASELINE, "cpu"])
def test_inference_carries_the_state_between_calls_and_records_no_graph(name, provider):
    if provider != BASELINE and provider not in cpu_backends():
        pytest.skip(f"backend {provider!r} unavailable on cpu")
    case = cases.Case(SHAPES[name], "forward", torch.float32, "cpu")
    workload = workloads.build(case, provider)
    first, second = workload.run(None), workload.run(None)
    assert first.grad_fn is None and second.grad_fn is None
    assert not torch.equal(first, second)
    assert torch.equal(workload.forward_output(), workload.forward_output())


@pytest.mark.parametrize("name", ["tiny-generate", "tiny-inference"])
def test_inference_has_no_backward_mode(name):
    case = cases.Case(SHAPES[name], "backward", torch.float32, "cpu")
    with pytest.raises(ValueError, match="inference only"):
        workloads.build(case, BASELINE)
    assert all(c.mode == "forward" for c in cases.select("cpu", shapes=[name]))


def test_timing_leaves_prepare_out_and_counts_calls():
    def prepare():
        time.sleep(0.03)

    def run(_):
        time.sleep(0.002)

    workload = workloads.Workload(prepare=prepare, run=run, forward_output=lambda: None)
    measured = timing.measure(workload, "cpu", timing.Budget.fixed(3, warmup=1))
    assert len(measured.warmup_s) == 1 and len(measured.times_s) == 3
    assert all(0.002 <= t < 0.025 for t in measured.times_s), measured.times_s
    assert measured.median_s == sorted(measured.times_s)[1]


def test_budget_picks_the_repetitions():
    budget = timing.Budget(warmup=1, seconds=1.0, min_repeats=5, max_repeats=200)
    assert budget.repeats([0.5]) == 5
    assert budget.repeats([0.9, 0.01]) == 100  # by the fastest warm-up call
    assert budget.repeats([1e-5]) == 200
    assert budget.repeats([]) == 5
    assert timing.Budget.fixed(7).repeats([10.0]) == 7
    with pytest.raises(ValueError, match="invalid budget"):
        timing.Budget(min_repeats=0)


def test_cpu_peak_memory_sees_allocations_reused_from_freed_memory():
    """Blocks freed below a live allocation leave a hole in the heap that the
    next call reuses without new resident pages (without the heap trim this
    read 1 MiB instead of 48): the peak must still count them."""
    if not timing.cpu_peak_supported():
        pytest.skip("/proc/self/clear_refs cannot reset the peak RSS here")
    blocks, block, keep = 48, 2**20, []

    def run(_):
        held = [torch.ones(block // 4) for _ in range(blocks)]
        keep.append(torch.ones(16))  # above the blocks on the heap, alive after the call
        return sum(float(t[0]) for t in held)

    workload = workloads.Workload(prepare=lambda: None, run=run, forward_output=lambda: None)
    for _ in range(3):
        workload.run(None)
    peak = timing.peak_memory(workload, "cpu")
    assert 0.9 * blocks * block <= peak < 3 * blocks * block, peak


def _record(shape, provider, median=None, status="ok", **extra):
    record = {"case": f"{shape}-forward-float32-cpu", "shape": shape, "mode": "forward",
              "dtype": "float32", "device": "cpu", "provider": provider, "status": status}
    if status == "ok":
        record.update(median_ms=median, times_ms=[median], warmup_ms=[], peak_memory_bytes=2**20)
    return {**record, **extra}


def test_table_ratios_flags_skips_and_errors():
    records = [
        _record("char", BASELINE, 10.0), _record("char", "cpu", 5.0, rel_diff=1e-7, rel_diff_bound=1e-4),
        _record("char", "x", 30.0, rel_diff=1e-2, rel_diff_bound=1e-4),
        _record("blog", BASELINE, 4.0), _record("blog", "cpu", status="error", reason="RuntimeError: boom"),
        _record("blog", "x", status="skipped", reason="no GPU"),
    ]
    text = report.table(records)
    lines = text.splitlines()
    assert lines[0] == ("| shape | mode | dtype | nn.LSTM ms | cpu ms | x ms | cpu / nn.LSTM | x / nn.LSTM "
                        "| nn.LSTM MiB | cpu MiB | x MiB |")
    assert lines[2] == "| char | forward | float32 | 10.0 | 5.00 | 30.0 | 0.50 | 3.00† | 1.0 | 1.0 | 1.0 |"
    assert lines[3] == "| blog | forward | float32 | 4.00 | error | skip | error | skip | 1.0 | - | - |"
    assert report.table(records, short=True).splitlines()[2] == "| char | forward | float32 | 10.0 | 0.50 | 3.00† |"
    assert [report.format_ratio(v) for v in (12.345, 0.5, 0.0123)] == ["12.35", "0.50", "0.012"]
    text = report.notes(records)
    assert "- x on char-forward-float32-cpu: 1.00e-02 > 1e-04" in text
    assert "- x (1 case): no GPU" in text
    assert "- cpu on blog-forward-float32-cpu: RuntimeError: boom" in text


def run_cli(*argv):
    return cli.main(["bench", *argv])


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_cli_runs_the_tiny_cases_end_to_end(tmp_path, capsys, restore_threads):
    out = tmp_path / "run"
    status = run_cli("--shapes", ",".join(TINY), "--repeats", "2", "--warmup", "1", "--out", str(out),
                     "--threads", "1", "--no-progress")
    assert status == 0
    printed = capsys.readouterr().out
    payload = json.loads((out / "results.json").read_text())
    assert payload["complete"] is True
    meta = payload["metadata"]
    for key in ("date", "commit", "torch", "cpu", "cpu_cores", "torch_threads", "fusedlstm_build"):
        assert key in meta
    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__ and meta["torch_threads"] == 1
    assert meta["command"].endswith("--repeats 2 --warmup 1 --threads 1")
    if torch.backends.mkldnn.is_available():
        assert meta["onednn"]  # nn.LSTM's CPU library: its version belongs to the figures
    providers = cases.providers("cpu")
    assert payload["settings"]["providers"] == providers
    expected_rows = [(c.shape.name, c.mode) for c in cases.select("cpu", shapes=list(TINY))]
    assert len(payload["results"]) == len(expected_rows) * len(providers)
    for record in payload["results"]:
        assert record["status"] == "ok", record
        assert len(record["warmup_ms"]) == 1 and len(record["times_ms"]) == 2
        assert record["median_ms"] > 0
        if record["provider"] != BASELINE:
            assert record["rel_diff"] <= record["rel_diff_bound"]
    for shape, mode in expected_rows:
        assert f"| {shape} | {mode} | float32 |" in printed
    for backend in providers[1:]:
        assert f"{backend} / nn.LSTM" in printed
    assert (out / "table.md").read_text() == report.document(payload)
    png = (out / "ratios.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


@pytest.mark.slow
def test_isolate_times_each_provider_in_its_own_process(tmp_path, capsys, monkeypatch, restore_threads):
    from fusedlstm.bench import isolated

    launched, run = [], subprocess.run

    def recording_run(command, **kwargs):  # subprocess.run itself: git is run through it too
        if command[1:3] == ["-m", "fusedlstm.bench.isolated"]:
            launched.append(json.loads(command[-1]))
        return run(command, **kwargs)

    monkeypatch.setattr(isolated.subprocess, "run", recording_run)
    out = tmp_path / "run"
    status = run_cli("--shapes", "tiny", "--modes", "forward+backward", "--repeats", "3", "--warmup", "1",
                     "--threads", "1", "--isolate", "--out", str(out), "--no-progress")
    assert status == 0
    payload = json.loads((out / "results.json").read_text())
    providers = cases.providers("cpu")
    assert [spec["provider"] for spec in launched] == providers
    assert all(spec["shape"] == "tiny" and spec["mode"] == "forward+backward" and spec["threads"] == 1
               and spec["budget"]["min_repeats"] == 3 for spec in launched)
    assert payload["settings"]["isolated"] is True and payload["metadata"]["command"].endswith("--isolate")
    for record in payload["results"]:
        assert record["status"] == "ok", record
        assert len(record["warmup_ms"]) == 1 and len(record["times_ms"]) == 3 and record["median_ms"] > 0
        assert record["peak_memory_bytes"] is not None
        if record["provider"] != BASELINE:
            assert record["rel_diff"] <= record["rel_diff_bound"]
    assert "each provider timed in its own process (--isolate)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_failing_isolated_process_is_recorded_as_an_error(tmp_path, capsys, monkeypatch):
    from fusedlstm.bench import isolated

    spec = isolated.spec
    monkeypatch.setattr(isolated, "spec", lambda *args: {**spec(*args), "shape": "no-such-shape"})
    status = run_cli("--shapes", "tiny", "--modes", "forward", "--repeats", "1", "--warmup", "0",
                     "--isolate", "--out", str(tmp_path / "run"), "--no-progress")
    assert status == 1
    records = json.loads((tmp_path / "run" / "results.json").read_text())["results"]
    assert records and all(r["status"] == "error" for r in records)
    assert "the isolated timing process of tiny-forward-float32-cpu / nn.LSTM exited with status 1" in \
        records[0]["reason"]
    assert "no-such-shape" in records[0]["reason"]


def test_an_interrupted_run_reports_what_it_finished(tmp_path, capsys, monkeypatch):
    from fusedlstm.bench import runner

    real_run_case = runner.run_case

    def interrupted_after_first_case(case, providers, budget, *options):
        if case.shape.name != "tiny" or case.mode != "forward":
            raise KeyboardInterrupt
        yield from real_run_case(case, providers, budget, *options)

    monkeypatch.setattr(runner, "run_case", interrupted_after_first_case)
    out = tmp_path / "run"
    assert run_cli("--shapes", "tiny", "--repeats", "1", "--warmup", "0", "--out", str(out),
                   "--no-progress") == 130
    payload = json.loads((out / "results.json").read_text())
    assert payload["complete"] is False
    assert {r["mode"] for r in payload["results"]} == {"forward"}
    assert "**Incomplete run**" in capsys.readouterr().out
    assert (out / "ratios.png").is_file()


def test_bench_table_merges_saved_runs(tmp_path, capsys):
    meta = {"device": "cpu", "cpu": "test CPU", "cpu_cores": 2, "torch_threads": 2, "torch": "x",
            "date": "today", "commit": "abc"}
    settings = {"dtypes": ["float32"], "warmup": 1, "memory_method": "m"}
    for dtype in ("float32", "bfloat16"):
        records = [{**_record("char", p, m), "dtype": dtype} for p, m in ((BASELINE, 8.0), ("cpu", 4.0))]
        (tmp_path / dtype).mkdir()
        (tmp_path / dtype / "results.json").write_text(json.dumps(
            {"metadata": meta, "settings": {**settings, "dtypes": [dtype]}, "results": records}))
    assert cli.main(["bench-table", str(tmp_path / "float32"), str(tmp_path / "bfloat16" / "results.json"),
                     "--short", "--plot", str(tmp_path / "both.png")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "both.png").read_bytes().startswith(b"\x89PNG")
    assert "(float32, bfloat16)" in printed
    assert "| char | forward | float32 | 8.00 | 0.50 |" in printed
    assert "| char | forward | bfloat16 | 8.00 | 0.50 |" in printed
    with pytest.raises(SystemExit, match="no results file"):
        cli.main(["bench-table", str(tmp_path / "missing")])


def test_merge_keeps_every_runs_metadata():
    runs = [{"metadata": {"command": f"run {k}", "device": "cpu"}, "settings": {"dtypes": [d]},
             "results": [_record("char", BASELINE, 1.0)]} for k, d in enumerate(("float32", "bfloat16"))]
    merged = report.merge(runs)
    assert merged["merged_metadata"] == [runs[0]["metadata"], runs[1]["metadata"]]
    assert merged["metadata"]["command"] == "run 0`; `run 1"
    assert merged["settings"]["dtypes"] == ["float32", "bfloat16"]
    assert len(merged["results"]) == 2
    assert report.merge([merged, runs[0]])["merged_metadata"] == [*merged["merged_metadata"], runs[0]["metadata"]]


def test_cli_refuses_unknown_names(capsys):
    for option, value in (("--shapes", "tiny,nope"), ("--dtype", "float8"), ("--backends", "nope"),
                          ("--modes", "sideways")):
        with pytest.raises(SystemExit) as exc:
            run_cli(option, value)
        assert exc.value.code == 2
        assert "nope" in capsys.readouterr().err or option in ("--dtype", "--modes")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: its cases run")
def test_gpu_cases_skip_with_a_reason_without_a_gpu(tmp_path):
    case = cases.select("cuda", shapes=["tiny"])[0]
    assert cases.skip_reason(case, BASELINE) == "no CUDA GPU on this machine"
    with pytest.raises(SystemExit, match="no CUDA GPU is visible"):
        run_cli("--device", "cuda", "--shapes", "tiny", "--out", str(tmp_path))


@pytest.mark.slow
@pytest.mark.cuda
def test_cli_runs_the_tiny_cases_on_a_gpu(tmp_path, capsys):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    out = tmp_path / "run"
    assert run_cli("--device", "cuda", "--dtype", "float32,bfloat16", "--shapes", ",".join(TINY),
                   "--repeats", "2", "--warmup", "1", "--out", str(out), "--no-progress") == 0
    payload = json.loads((out / "results.json").read_text())
    assert payload["metadata"]["gpu"] == torch.cuda.get_device_name(0)
    assert payload["settings"]["providers"] == cases.providers("cuda")
    for record in payload["results"]:
        assert record["status"] == "ok", record
        assert len(record["times_ms"]) == 2 and record["median_ms"] > 0
        assert record["peak_memory_bytes"] is not None
        if record["provider"] != BASELINE:
            assert record["rel_diff"] <= record["rel_diff_bound"], record
    assert "| tiny | forward | bfloat16 |" in capsys.readouterr().out


@pytest.mark.slow
def test_pytest_benchmark_suite_runs_a_tiny_case(tmp_path):
    """benchmarks/ (run apart with --benchmark-only) collects from the same
    cases and times one through pytest-benchmark; GPU cases skip with a reason."""
    pytest.importorskip("pytest_benchmark")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks", "--benchmark-only", "--bench-shapes", "tiny",
         "--bench-modes", "forward+backward", "--bench-budget", "0", "-q", "-rs", "-p", "no:cacheprovider",
         f"--benchmark-json={tmp_path / 'bench.json'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads((tmp_path / "bench.json").read_text())
    names = {b["name"] for b in data["benchmarks"]}
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    assert names == {f"test_lstm[tiny-forward+backward-float32-{device}-{p}]"
                     for device in devices for p in cases.providers(device)}
    assert all(b["extra_info"]["peak_memory_method"] for b in data["benchmarks"])
    if not torch.cuda.is_available():
        assert "no CUDA GPU on this machine" in result.stdout


def test_tf32_setting_covers_cudnn_and_cublas_and_reaches_isolated_processes():
    from fusedlstm.bench import isolated

    (case,) = cases.select("cpu", ["float32"], ["tiny"], ["forward"])
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for allowed in (True, False):
            timing.set_tf32(allowed)
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (allowed, allowed)
            assert isolated.spec(case, BASELINE, timing.Budget(), None)["tf32"] is allowed
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_profile_kernels_lists_each_providers_work():
    """benchmarks/profile_kernels.py (run by the device script) on CPU: per provider, a
    header with the calls' total and one row per op, the busiest first."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "profile_kernels.py"), "--shape", "tiny", "--device", "cpu",
         "--providers", BASELINE, "cpu", "--calls", "2", "--top", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for provider in (BASELINE, "cpu"):
        (at,) = [i for i, line in enumerate(lines) if line.startswith(f"{provider} — tiny-forward+backward")]
        assert "2 calls:" in lines[at] and "ms per call (wall)" in lines[at] and "ms of CPU ops" in lines[at]
        rows = [line.split() for line in lines[at + 2:at + 5]]
        shares = [float(row[3].rstrip("%")) for row in rows]
        assert len(rows) == 3 and shares == sorted(shares, reverse=True) and 0 < shares[0] <= 100
