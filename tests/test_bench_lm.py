"""benchmarks/bench_lm.py: every variant runs, and the variants are comparable."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lm.py"
sys.path.insert(0, str(_path.parent))  # as `python benchmarks/bench_lm.py` has it: the shared benchmarks/_measure.py
_spec = importlib.util.spec_from_file_location("bench_lm", _path)
bench_lm = sys.modules["bench_lm"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_lm)

TINY = bench_lm.PRESETS["tiny"]


def test_tiny_preset_prints_a_row_per_variant_with_finite_ratios(tmp_path, capsys):
    out = tmp_path / "lm.json"
    rows = bench_lm.main(["--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--rounds", "1",
                          "--json", str(out)])
    printed = capsys.readouterr().out
    assert [r["variant"] for r in rows] == list(bench_lm.VARIANTS)
    for r in rows:
        assert f"| {r['variant']} |" in printed
        for key in ("ms_per_step", "tokens_per_s", "time_vs_full", "peak_mib", "peak_vs_full", "saved_mib",
                    "saved_vs_full"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["variant"], key, r[key])
    assert rows[0]["time_vs_full"] == rows[0]["peak_vs_full"] == rows[0]["saved_vs_full"] == 1.0
    peak = {r["variant"]: r["peak_mib"] for r in rows}
    # full training holds a gradient and two AdamW moments of every weight: 3 x 4 bytes x its parameters more
    n_full, n_ours = (r["trainable"] for r in rows[:2])
    assert peak["full"] - peak["ours"] > 0.8 * 12 * (n_full - n_ours) / 2**20
    assert "command: python benchmarks/bench_lm.py --preset tiny" in printed
    record = json.loads(out.read_text())
    assert record["rows"] == rows
    assert {"torch", "numpy", "peft", "python"} <= set(record["versions"])


def test_variants_train_the_same_adapters_and_other_modules():
    """ours, plain and peft: A, B of r (d_in + d_out) per projection, plus the same embedding,
    norms and lm_head; ours and plain add one beta per projection."""
    n_proj = 7 * TINY.n_layers  # q, k, v, o, gate, up, down
    expected = TINY.n_layers * 8 * (4 * 2 * TINY.d + 3 * (TINY.d + TINY.hidden))
    assert bench_lm.expected_adapter_parameters(TINY) == expected
    models = {v: bench_lm.build(v, TINY) for v in bench_lm.VARIANTS}
    trainable = {v: sum(p.numel() for p in m.parameters() if p.requires_grad) for v, m in models.items()}
    others = {v: trainable[v] - bench_lm.adapter_parameters(m) for v, m in models.items()}
    for v in ("ours", "plain", "peft"):
        assert bench_lm.adapter_parameters(models[v]) == expected, v
    full = models["full"]
    head = sum(p.numel() for m in (full.embed, full.head, full.norm) for p in m.parameters())
    head += sum(p.numel() for b in full.blocks for m in (b.attn_norm, b.mlp_norm) for p in m.parameters())
    assert others["peft"] == head
    assert others["ours"] == others["plain"] == head + n_proj  # beta
    assert trainable["full"] == sum(p.numel() for p in full.parameters())


def test_plain_takes_the_generic_autograd_path_and_agrees_with_ours():
    ours, plain = bench_lm.build("ours", TINY), bench_lm.build("plain", TINY)
    kinds = {type(m).__name__ for m in plain.modules()}
    assert "PlainScaffoldLinear" in kinds and "ScaffoldLinear" not in kinds
    x = torch.randint(0, TINY.vocab, (2, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(plain(x), ours(x))


@pytest.mark.parametrize("argv", [["--variants", "ours,peft"], ["--variants", "full,lora"], ["--steps", "0"]])
def test_refuses_what_it_cannot_honour(argv, capsys):
    with pytest.raises(SystemExit):
        bench_lm.main(["--preset", "tiny", "--device", "cpu", *argv])
    assert "--" in capsys.readouterr().err


def test_a_compile_failure_is_a_row_and_the_run_goes_on(monkeypatch, capsys):
    def broken(model):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(bench_lm, "compile_blocks", broken)
    rows = bench_lm.main(["--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--rounds", "2",
                          "--variants", "full,ours", "--compile"])
    assert [r["variant"] for r in rows] == ["full", "ours", "full+compile", "ours+compile"]
    assert rows[2] == {"variant": "full+compile", "error": "RuntimeError: no compiler here"}
    assert math.isfinite(rows[1]["time_vs_full"])
    assert "| ours+compile | failed: RuntimeError: no compiler here |" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_variants_run():
    rows = bench_lm.main(["--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--rounds", "1",
                          "--variants", "full,ours,plain", "--compile"])
    assert all(math.isfinite(r.get("time_vs_full", math.nan)) for r in rows), rows


def test_the_medium_mlp_runs_every_variant_on_the_same_layers(capsys):
    rows = bench_lm.main(["--model", "mlp", "--device", "cpu", "--steps", "1", "--warmup", "0", "--rounds", "1"])
    printed = capsys.readouterr().out
    assert [r["variant"] for r in rows] == list(bench_lm.VARIANTS)
    assert "| variant | ms/step | samples/s |" in printed and "model: MLP, preset medium" in printed
    for r in rows:
        assert math.isfinite(r["samples_per_s"]) and r["samples_per_s"] > 0
    c = bench_lm.MLP_PRESETS["medium"]
    dims = (c.d_in, 512, 256, 128, 64)
    expected = sum(8 * (a + b) for a, b in zip(dims[:-1], dims[1:]))  # r (d_in + d_out) per hidden layer
    head = 64 * 10 + 10
    models = {v: bench_lm.build(v, c) for v in bench_lm.VARIANTS}
    for v in ("ours", "plain", "peft"):
        assert bench_lm.adapter_parameters(models[v]) == expected, v
    trainable = {v: sum(p.numel() for p in m.parameters() if p.requires_grad) for v, m in models.items()}
    assert trainable["peft"] == expected + head
    assert trainable["ours"] == trainable["plain"] == expected + head + 4  # one beta per hidden layer
    x = torch.randn(3, c.d_in, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(models["plain"](x), models["ours"](x))
    torch.testing.assert_close(models["peft"](x), models["full"](x))  # B = 0: peft starts at the base model


def test_seed_dtype_holds_w_seed_of_ours_and_plain(capsys):
    rows = bench_lm.main(["--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--rounds", "1",
                          "--variants", "full,ours,plain", "--seed-dtype", "bfloat16"])
    dtypes = {r["variant"]: r["frozen_dtype"] for r in rows}
    assert dtypes["ours"] == dtypes["plain"] == "bfloat16" and dtypes["full"] == "-"
    assert "W_seed of ours and plain held in bfloat16" in capsys.readouterr().out


def test_refuses_a_preset_of_the_other_model(capsys):
    with pytest.raises(SystemExit):
        bench_lm.main(["--model", "mlp", "--preset", "cpu", "--device", "cpu"])
    assert "--preset" in capsys.readouterr().err


def test_peak_step_bytes_counts_live_storages_once_and_the_step_high_water_mark():
    import _measure

    a = torch.zeros(1000)
    base = _measure.peak_step_bytes([a, a.view(10, 100), a[:10]], lambda: None)
    assert base == 4000

    def two_at_once():
        x, y = torch.ones(5000), torch.ones(5000)  # 40,000 bytes live together
        return (x + y).sum()

    def one_after_another():
        torch.ones(5000).sum()
        torch.ones(5000).sum()

    together = _measure.peak_step_bytes([a], two_at_once) - base
    apart = _measure.peak_step_bytes([a], one_after_another) - base
    assert 60_000 <= together < 61_000  # x, y and x + y
    assert 20_000 <= apart < 21_000
