"""Preflight estimates with fake device numbers: the printed summary, the refusal and its advice."""

from __future__ import annotations

import json

import pytest

from softrec import preflight
from softrec.cli import main
from softrec.config import load_config
from softrec.errors import UserError
from softrec.models import token_counts

GiB = preflight.GiB


@pytest.fixture(autouse=True)
def fake_device(monkeypatch):
    """A CPU with 16 GiB free and 100 GFLOP/s measured (no timing in tests)."""
    monkeypatch.delenv("SOFTREC_NO_PREFLIGHT", raising=False)
    monkeypatch.setattr(preflight, "device_name", lambda: "cpu")
    monkeypatch.setattr(preflight, "available_memory", lambda device: 16 * GiB)
    monkeypatch.setattr(preflight, "cpu_matmul_flops", lambda: 100e9)


def test_model_shape_without_weights(tmp_path):
    gemma = preflight.model_shape("gemma-3-270m")
    assert gemma.params == 268_098_176 and gemma.vocab == 262_144
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128, "vocab_size": 100}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [10, 20], "data_offsets": [0, 800]},
                         "b": {"dtype": "F32", "shape": [5], "data_offsets": [800, 820]}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(820))
    shape = preflight.model_shape(str(folder))
    assert shape.params == 205 and shape.kv_dim == 32 and shape.layers == 2  # from the header, no tensor read
    with pytest.raises(preflight.UnknownModel):
        preflight.model_shape("no-such-model")


def test_training_estimate_parts_scale_with_the_settings(tiny_dataset):
    small = preflight.estimate_train(load_config(values={"model.name": "gemma-3-270m"}), tiny_dataset)
    big = preflight.estimate_train(load_config(values={"model.name": "gemma-3-270m", "train.micro_batch": 32}),
                                   tiny_dataset)
    full = preflight.estimate_train(load_config(values={"model.name": "gemma-3-270m", "train.lora.enabled": False}),
                                    tiny_dataset)
    assert small.memory["weights"] == 268_098_176 * 4
    assert big.memory["activations"] == 4 * small.memory["activations"]
    assert big.memory["lm_head"] == 4 * small.memory["lm_head"]
    assert small.memory["grads+optimizer"] < 0.01 * GiB < full.memory["grads+optimizer"] == 268_098_176 * 12
    assert full.seconds > small.seconds > 0  # 6 vs 4 FLOPs per parameter and token
    text = small.summary()
    assert text.startswith("preflight train (gemma-3-270m on cpu): peak memory ~") and "16.0 GiB available" in text


def test_refusal_names_the_setting_to_change(tiny_dataset, monkeypatch):
    config = load_config(values={"model.name": "gemma-3-270m", "train.micro_batch": 256,
                                 "train.logits_at_labels_only": False})
    estimate = preflight.estimate_train(config, tiny_dataset)
    assert estimate.peak > 16 * GiB
    with pytest.raises(UserError, match=r"preflight: train needs ~\d+\.\d GiB on cpu but only 16\.0 GiB.*"
                                        r"lm_head.*train\.micro_batch.*--no-preflight"):
        preflight.check(estimate)
    monkeypatch.setattr(preflight, "available_memory", lambda device: GiB + GiB // 2)
    eval_estimate = preflight.estimate_generation(load_config(values={"model.name": "gemma-3-270m"}), tiny_dataset,
                                                  100, stage="evaluate", num_beams=4, max_new_tokens=64, batch_size=8)
    with pytest.raises(UserError, match="weights.*smaller --model"):
        preflight.check(eval_estimate)


def test_generation_time_grows_with_samples_and_beams(tiny_dataset):
    config = load_config(values={"model.name": "smollm2-135m"})

    def seconds(n, beams):
        return preflight.estimate_generation(config, tiny_dataset, n, stage="evaluate", num_beams=beams,
                                             max_new_tokens=64, batch_size=8).seconds

    assert seconds(200, 4) > 1.9 * seconds(100, 4) and seconds(100, 8) > seconds(100, 4)



def test_bf16_decoding_of_fp32_weights_prices_its_copy_and_same_dtype_decoding_does_not(tiny_dataset):
    """`decoding_model` decodes a bf16 copy when the weights are fp32: 0.5 GiB for Gemma 3 270M."""
    def copy_bytes(**values):
        config = load_config(values={"model.name": "gemma-3-270m", **values})
        return preflight.estimate_generation(config, tiny_dataset, 10, stage="evaluate", num_beams=4,
                                             max_new_tokens=64, batch_size=8, device="cpu").memory.get("decoding_copy")

    assert copy_bytes(**{"eval.dtype": "bfloat16"}) == 268_098_176 * 2
    assert copy_bytes(**{"eval.dtype": "float32"}) is None
    assert copy_bytes(**{"eval.dtype": "bfloat16", "model.dtype": "bfloat16"}) is None


def test_the_kv_cache_is_priced_for_the_prompts_a_batch_really_holds(tiny_dataset):
    config = load_config(values={"model.name": "gemma-3-270m"})

    def kv_cache(n):
        return preflight.estimate_generation(config, tiny_dataset, n, stage="validate", num_beams=4,
                                             max_new_tokens=64, batch_size=32, device="cpu").memory["kv_cache"]

    assert kv_cache(16) * 2 == kv_cache(32) == kv_cache(1000)

def test_cli_prints_the_estimate_and_refuses_with_exit_2(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preflight, "available_memory", lambda device: GiB // 4)  # less than tiny needs
    args = ["train", "--data", str(tiny_dataset.path), "--out", str(tmp_path / "run"), "--model", "tiny"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "preflight train (tiny on cpu)" in captured.out
    assert "softrec: error: preflight: train needs" in captured.err and "--no-preflight" in captured.err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    monkeypatch.setenv("SOFTREC_NO_PREFLIGHT", "1")
    assert preflight.preflight_train(load_config(values={"model.name": "tiny"}), tiny_dataset) is None
    monkeypatch.delenv("SOFTREC_NO_PREFLIGHT")
    assert preflight.preflight_train(load_config(values={"model.name": "tiny"}), tiny_dataset, skip=True) is None


def test_the_estimate_warns_when_other_work_holds_the_cpu(tiny_dataset, capsys, monkeypatch):
    """On 2 cores a second torch process slowed `make run`'s SFT ~10x and its distillation ~17x."""
    import psutil

    config = load_config(values={"model.name": "tiny"})
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 95.0)
    assert "other work is using 95% of this CPU" in preflight.preflight_train(config, tiny_dataset).summary()
    assert "other work is using 95%" in capsys.readouterr().out
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval: 20.0)  # a quiet CPU: no note
    assert "other work" not in preflight.preflight_train(config, tiny_dataset).summary()


def test_unknown_backbone_skips_the_estimate(tiny_dataset, capsys):
    config = load_config(values={"model.name": "org/some-hub-model"})
    assert preflight.preflight_train(config, tiny_dataset) is None
    assert "no shape known for model 'org/some-hub-model'" in capsys.readouterr().out


def test_soft_adds_its_probe_decoding_and_sd_only_does_not(tiny_dataset):
    def estimate(method):
        config = load_config(values={"model.name": "gemma-3-270m", "train.method": method, "train.epochs": 2,
                                     "soft.probe_size": 16})
        return preflight.estimate_train(config, tiny_dataset)

    soft, sd_only = estimate("soft"), estimate("soft-sd-only")
    defaults = load_config()
    probe = preflight.estimate_generation(
        load_config(values={"model.name": "gemma-3-270m"}), tiny_dataset, 16, stage="probe",
        num_beams=defaults.soft.distill_beams, max_new_tokens=defaults.soft.distill_max_new_tokens,
        batch_size=defaults.eval.batch_size, catalogue=False)  # the probe grounds nothing
    assert "3 probes of 16 samples included" in soft.summary() and "probes" not in sd_only.summary()
    assert soft.seconds == pytest.approx(sd_only.seconds + 3 * probe.seconds)


def test_the_efficiency_factor_is_the_dtypes_on_the_fp32_rate(monkeypatch):
    # bf16 work is priced from the (only) fp32 rate: an AMX VM's bf16 bursts swing 2.5x run to run
    monkeypatch.setattr(preflight, "cpu_matmul_flops", lambda: 100e9)
    assert preflight.device_flops("cpu", bf16=True) == 100e9 * preflight.CPU_TRAIN_EFFICIENCY[True]
    assert preflight.device_flops("cpu", generate=True) == 100e9 * preflight.CPU_GENERATE_EFFICIENCY[False]
    # the catalogue's embedding is an fp32 prefill, not decoding: its own factor
    assert preflight.device_flops("cpu", catalogue=True) == 100e9 * preflight.CPU_CATALOGUE_EFFICIENCY


def test_a_trained_models_decoding_steps_follow_the_title_length_up_to_the_cap():
    """The steps measured on trained teachers: 10.8 on the demo (titles 5.0 tokens), 42.7 on
    amazon-industrial (27.2); the fixed 32 the model replaces read them 3x high and 0.75x low."""
    assert preflight.typical_new_tokens(5.0, 32) == pytest.approx(10.8, abs=0.5)
    assert preflight.typical_new_tokens(27.2, 64) == pytest.approx(42.7, abs=0.5)
    assert preflight.typical_new_tokens(27.2, 32) == 32  # max_new_tokens caps it


def test_the_matmul_rate_is_the_median_of_bursts_not_one_lucky_burst(monkeypatch):
    """A fake clock and matmul: six bursts at 4 matmuls/s, one lucky burst at 8/s (a shared VM)."""
    import torch

    monkeypatch.undo()  # the real timing function
    durations = iter([0.25] + [0.25] * 9 + [0.125] * 5 + [0.25] * 9)  # warm-up; 3 bursts; the lucky one; 3
    clock = {"now": 0.0}

    class FakeMatrix:
        def __matmul__(self, other):
            clock["now"] += next(durations)
            return self

    monkeypatch.setattr(torch, "randn", lambda *args, **kwargs: FakeMatrix())
    monkeypatch.setattr(preflight.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(preflight, "_CPU_FLOPS", {})
    rate = preflight.cpu_matmul_flops(n=10, bursts=7, seconds=0.6)
    assert rate == 2 * 10**3 * 4  # 3 matmuls in 0.75 s; the lucky burst did 5 in 0.625 s
    assert next(durations, None) is None


def test_the_pipeline_prints_the_whole_recipes_time_and_a_conversion_still_to_come(tiny_dataset, capsys, monkeypatch):
    from softrec import pipeline
    from softrec.models import gguf

    config = load_config(values={"model.name": "gemma-3-270m", "train.epochs": 2})
    monkeypatch.setattr(gguf, "is_converted", lambda name: False)
    pipeline._preflight(config, tiny_dataset, soft_runs=3)
    out = capsys.readouterr().out
    sft = preflight.estimate_train(config.with_(train={"method": "sft"}), tiny_dataset).seconds
    soft = preflight.estimate_train(config.with_(train={"method": "soft"}), tiny_dataset).seconds
    total = [line for line in out.splitlines() if line.startswith("preflight total: ~")]
    assert len(total) == 1 and "3 SOFT run(s)" in total[0] and "one-time conversion of gemma-3-270m" in total[0]
    assert soft > sft  # the packed second target and the probes
    generation = {"num_beams": config.eval.num_beams, "batch_size": config.eval.batch_size}
    distill = preflight.estimate_generation(config, tiny_dataset, len(tiny_dataset.split("train")), stage="distill",
                                            num_beams=config.soft.distill_beams, batch_size=config.eval.batch_size,
                                            max_new_tokens=config.soft.distill_max_new_tokens).seconds
    test = preflight.estimate_generation(config, tiny_dataset, len(tiny_dataset.split("test")), stage="evaluate",
                                         max_new_tokens=config.eval.max_new_tokens, **generation).seconds
    assert total[0].startswith(f"preflight total: ~{preflight.duration(sft + distill + 3 * soft + 2 * test)} for")
    monkeypatch.setattr(gguf, "is_converted", lambda name: True)
    pipeline._preflight(config, tiny_dataset, soft_runs=1)
    assert "conversion" not in capsys.readouterr().out


def test_expected_longest_is_the_exact_mean_of_a_random_groups_maximum():
    assert token_counts.expected_longest([1, 2, 3, 4], 2) == pytest.approx((2 * 1 + 3 * 2 + 4 * 3) / 6)
    assert token_counts.expected_longest([4, 1, 3, 2], 1) == pytest.approx(2.5)  # no padding alone
    assert token_counts.expected_longest([1, 2, 3, 4], 4) == token_counts.expected_longest([1, 2, 3, 4], 9) == 4
    import itertools

    lengths = [5, 9, 9, 14, 30, 31, 200]
    groups = list(itertools.combinations(lengths, 3))
    assert token_counts.expected_longest(lengths, 3) == pytest.approx(sum(map(max, groups)) / len(groups))


def test_training_time_counts_real_tokens_and_the_padding_of_random_micro_batches(tiny_dataset):
    from softrec.data.prompts import response_text, sample_prompt
    from softrec.models.tiny import tiny_tokenizer

    config = load_config(values={"model.name": "tiny"})
    tokenizer = tiny_tokenizer()
    samples = tiny_dataset.split("train")[:5]
    counted = [len(tokenizer(sample_prompt(tiny_dataset, s, config.model.template, tokenizer)
                             + response_text(tiny_dataset.titles[s.target]))["input_ids"]) for s in samples]
    assert token_counts.sample_lengths(tiny_dataset, config, 5) == counted  # the tokenizer's count, not characters
    estimate = preflight.estimate_train(config, tiny_dataset)
    lengths = token_counts.sample_lengths(tiny_dataset, config, token_counts.TIME_PROBE)
    assert f"~{token_counts.expected_longest(lengths, 8):.0f} tokens each as micro-batches of 8 pad them" in estimate.summary()
    grouped = preflight.estimate_train(config.with_(train={"group_by_length": True}), tiny_dataset)
    assert grouped.seconds < estimate.seconds  # length-grouped micro-batches pad (almost) nothing


def test_memory_is_priced_at_the_longest_training_sample_with_softs_distilled_target(tiny_dataset):
    from softrec.data.subsets import training_samples

    config = load_config(values={"model.name": "tiny"})
    trained = training_samples(tiny_dataset, config)
    assert len(trained) > 3
    longest = max(token_counts.sample_lengths(tiny_dataset, config, samples=trained))
    assert token_counts.longest_training_tokens(tiny_dataset, config) == longest  # every trained sample, not 64
    soft = config.with_(train={"method": "soft"})
    short = {s.sample_id: '"x"' for s in trained}
    run_on = {**short, trained[2].sample_id: " ".join(["word"] * 80)}  # one distilled target runs on
    assert token_counts.longest_training_tokens(tiny_dataset, soft, short) == longest
    with_run_on = token_counts.longest_training_tokens(tiny_dataset, soft, run_on)
    assert with_run_on > longest
    # not distilled yet (the pipeline's preflight): a prompt plus the distillation's token cap
    prompts = token_counts.sample_lengths(tiny_dataset, config, samples=trained, responses=dict.fromkeys(short, ""))
    assert token_counts.longest_training_tokens(tiny_dataset, soft) == min(
        config.model.max_length, max(max(prompts) + config.soft.distill_max_new_tokens, longest))
    plain = preflight.estimate_train(soft, tiny_dataset, distilled=short)
    long = preflight.estimate_train(soft, tiny_dataset, distilled=run_on)
    assert long.memory["activations"] > plain.memory["activations"]


def test_cpu_training_prices_the_heap_glibc_keeps_and_a_gpu_does_not(tiny_dataset, monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)  # a machine that preloads tcmalloc prices only the constant
    small = preflight.estimate_train(load_config(values={"model.name": "gemma-3-270m"}), tiny_dataset)
    big = preflight.estimate_train(load_config(values={"model.name": "gemma-3-270m", "train.micro_batch": 32}),
                                   tiny_dataset)
    transient = lambda e: e.memory["activations"] + e.memory["lm_head"]  # noqa: E731
    assert small.memory["heap"] == GiB + int(0.3 * transient(small))
    assert big.memory["heap"] - small.memory["heap"] == int(0.3 * transient(big)) - int(0.3 * transient(small)) > 0
    assert "heap" in small.summary()
    gpu = preflight.estimate_train(load_config(values={"model.name": "gemma-3-270m"}), tiny_dataset, device="NVIDIA H100")
    assert "heap" not in gpu.memory
    # a fixed mmap threshold of 1 MiB or less, or another allocator, keeps the heap small: only the constant stays
    assert preflight.heap_retention(8 * GiB, {"MALLOC_MMAP_THRESHOLD_": "131072"}) == GiB
    assert preflight.heap_retention(8 * GiB, {"MALLOC_MMAP_THRESHOLD_": str(8 << 20)}) == GiB + int(0.3 * 8 * GiB)
    assert preflight.heap_retention(8 * GiB, {"MALLOC_MMAP_THRESHOLD_": "junk"}) == GiB + int(0.3 * 8 * GiB)
    assert preflight.heap_retention(8 * GiB, {"LD_PRELOAD": "libtcmalloc_minimal.so.4"}) == GiB
    assert preflight.heap_retention(8 * GiB, {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == GiB
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert preflight.estimate_train(load_config(values={"model.name": "gemma-3-270m"}), tiny_dataset).memory["heap"] == GiB
