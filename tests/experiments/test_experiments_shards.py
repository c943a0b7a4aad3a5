"""``evaluate --shard K/N`` and ``--merge``: merged shards equal the one-process run (per_sample.csv byte for
byte, a cascade with a transfer attack, a batch count that N does not divide), and every refusal of the merge
is one line with exit status 2 naming what is wrong."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import evaluate
from experiments.cli import UsageError, run
from experiments.shards import parse_shard
from nets.datasets import mnist as mnist_module
from nets.registry import build_model
from nets.training import atomic_torch_save, load_trained_model
from tests.nets.test_data import idx_bytes, write_mnist

REPO = Path(__file__).resolve().parents[2]
SAMPLES, BATCH = 7, 2  # 4 batches, the last one short


def save_resnet(folder: Path, seed: int, width: int) -> str:
    torch.manual_seed(seed)
    model = build_model("mnist_resnet_small", width=width)
    folder.mkdir(parents=True)
    atomic_torch_save({"model": model.state_dict(), "model_spec": {"name": "mnist_resnet_small",
                       "kwargs": {"width": width}}, "dataset": "mnist"}, folder / "model.pt")
    return str(folder)


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """Tiny MNIST files (noise images of rising brightness) whose test labels are the ResNet's own
    predictions, so every sample is attacked and some fall; the ResNet and an independent one to transfer
    from."""
    resnet = save_resnet(tmp_path / "res", 2, 2)  # seed 2: predictions vary with the brightness
    other = save_resnet(tmp_path / "other", 0, 3)
    files = write_mnist(tmp_path / "data", n_train=8, n_test=SAMPLES)
    brightness = np.linspace(0.05, 1.0, SAMPLES)[:, None, None]
    images = (files["arrays"]["t10k-images-idx3-ubyte.gz"] * brightness).astype(np.uint8)
    with torch.no_grad():
        model = load_trained_model(Path(resnet) / "model.pt")
        labels = model(torch.from_numpy(images).float().div(255).unsqueeze(1)).argmax(1).numpy()
    for name, array in (("t10k-images-idx3-ubyte.gz", images),
                        ("t10k-labels-idx1-ubyte.gz", labels.astype(np.uint8))):
        blob = gzip.compress(idx_bytes(array), mtime=0)
        (tmp_path / "data" / name).write_bytes(blob)
        files["md5"][name] = hashlib.md5(blob).hexdigest()
    for name, digest in files["md5"].items():
        monkeypatch.setitem(mnist_module.MNIST_MD5, name, digest)
    return tmp_path, resnet, other


def args(tmp_path, checkpoint, out, *extra):
    return ["--checkpoint", checkpoint, "--data-dir", str(tmp_path / "data"), "--out", str(out),
            "--eps", "0.05", "0.1", "--samples", str(SAMPLES), "--batch-size", str(BATCH),
            "--steps", "3", "--target-classes", "2", "--queries", "5",
            "--convergence-steps", "1", "2", "--convergence-samples", "2",
            "--no-progress", "--device", "cpu", "--threads", "1", *extra]


def merge_args(tmp_path, folders, out):
    return ["--merge", *map(str, folders), "--out", str(out), "--data-dir", str(tmp_path / "data"),
            "--no-progress", "--device", "cpu", "--threads", "1"]


def shards(tmp_path, checkpoint, count, prefix="shard", *extra):
    folders = []
    for k in range(count):
        folder = tmp_path / f"{prefix}{k}"
        assert evaluate.main(args(tmp_path, checkpoint, folder, *extra, "--shard", f"{k}/{count}")) == 0
        folders.append(folder)
    return folders


def _without_timings(card):
    card = dict(card)
    card.pop("command")
    return card


@pytest.mark.slow
def test_merged_shards_equal_the_one_process_run_byte_for_byte(world) -> None:
    tmp_path, resnet, other = world
    whole = tmp_path / "whole"
    assert evaluate.main(args(tmp_path, resnet, whole, "--against", other)) == 0
    folders = shards(tmp_path, resnet, 3, "shard", "--against", other)
    assert [json.loads((f / "shard.json").read_text())["shard"]["start"] for f in folders] == [0, 2, 4]
    merged = tmp_path / "merged"
    assert evaluate.main(merge_args(tmp_path, reversed(folders), merged)) == 0  # any order
    per_sample = (whole / "per_sample.csv").read_bytes()
    assert (merged / "per_sample.csv").read_bytes() == per_sample
    # the test can fail: the cascade fooled some samples, the transfer attack ran, some stayed robust
    rows = per_sample.decode().splitlines()
    assert len(rows) == SAMPLES + 1 and all(",True," in row for row in rows[1:])  # all clean-correct
    assert any("APGD" in row for row in rows[1:]) and any(row.endswith("True") for row in rows[1:])
    one, many = (json.loads((d / "model_info.json").read_text()) for d in (whole, merged))
    assert _without_timings(one) == _without_timings(many)
    transfer = one["results"][0]["per_attack"]["APGD-CE transfer from other"]
    assert transfer["attacked"] > 0 and transfer["forward_passes"] > 0
    flags = [json.loads((d / "results.json").read_text())["models"]["res"]["flags"] for d in (whole, merged)]
    assert flags[0] == flags[1]


@pytest.mark.slow
def test_a_shard_under_torchrun_merges_with_independent_shards(world) -> None:
    tmp_path, resnet, _ = world
    whole = tmp_path / "whole"
    assert evaluate.main(args(tmp_path, resnet, whole)) == 0
    first = tmp_path / "s0"
    assert evaluate.main(args(tmp_path, resnet, first, "--shard", "0/2")) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "experiments.evaluate",
               *args(tmp_path, resnet, tmp_path / "s1", "--shard", "1/2", "--no-verify")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    merged = tmp_path / "merged"
    assert evaluate.main(merge_args(tmp_path, [first, tmp_path / "s1"], merged)) == 0
    assert (merged / "per_sample.csv").read_bytes() == (whole / "per_sample.csv").read_bytes()
    card = json.loads((merged / "model_info.json").read_text())
    assert card["attack_forward_passes"] is None  # a torchrun shard cannot count its other process's passes


@pytest.mark.slow
def test_merge_refuses_gaps_duplicates_other_configurations_and_other_models(world, capsys) -> None:
    tmp_path, resnet, other = world
    folders = shards(tmp_path, resnet, 2)
    out = tmp_path / "merged"

    def refused(folders_, *needles):
        assert run(evaluate.main, merge_args(tmp_path, folders_, out)) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and all(n in error for n in needles), error
        assert not (out / "per_sample.csv").exists()

    refused([folders[0]], "missing shard(s) 1/2 (samples 4-6)")
    copy = tmp_path / "copy"
    shutil.copytree(folders[1], copy)
    refused([*folders, copy], "shard 1/2 given twice", str(copy))
    reseeded = tmp_path / "seed1"
    assert evaluate.main(args(tmp_path, resnet, reseeded, "--shard", "1/2", "--seed", "1")) == 0
    refused([folders[0], reseeded], "another configuration", "seed: 0 vs 1", str(reseeded))
    foreign = tmp_path / "foreign"
    assert evaluate.main(args(tmp_path, other, foreign, "--shard", "1/2")) == 0
    refused([folders[0], foreign], "another model", str(foreign))
    three = shards(tmp_path, resnet, 3, "three")
    refused([folders[0], three[1], three[2]], "another configuration", "shard count: 2 vs 3")
    recoded = tmp_path / "recoded"
    shutil.copytree(folders[1], recoded)
    manifest = json.loads((recoded / "shard.json").read_text())
    manifest["identity"]["code"]["attacks"] = "0" * 16
    (recoded / "shard.json").write_text(json.dumps(manifest))
    refused([folders[0], recoded], "made by other code", "attacks", str(recoded))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    refused([folders[0], unfinished], "no shard.json", str(unfinished))


def test_shard_specifications_are_checked_before_any_work(world, capsys) -> None:
    tmp_path, resnet, _ = world
    for text, needle in (("2/2", "0 <= K < N"), ("1-of-2", "expected K/N"), ("0/5", "use N <= 4")):
        assert run(evaluate.main, args(tmp_path, resnet, tmp_path / "x", "--shard", text)) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and needle in error, error
    assert not (tmp_path / "x").exists()
    assert run(evaluate.main, ["--out", str(tmp_path / "x")]) == 2
    assert "--checkpoint RUN is required" in capsys.readouterr().err


@pytest.mark.parametrize("samples,batch,count", [(7, 2, 3), (10, 3, 4), (250, 250, 1), (1000, 7, 9)])
def test_shards_are_contiguous_whole_batches_covering_every_sample_once(samples, batch, count) -> None:
    specs = [parse_shard(f"{k}/{count}", samples, batch) for k in range(count)]
    assert specs[0].start == 0 and specs[-1].stop == samples
    for a, b in zip(specs, specs[1:]):
        assert a.stop == b.start and b.start % batch == 0 and b.start > a.start
    with pytest.raises(UsageError):
        parse_shard(f"0/{-(-samples // batch) + 1}", samples, batch)


@pytest.mark.slow
def test_shards_of_an_in_memory_evaluation_merge_to_its_per_sample_rows(tmp_path) -> None:
    # the library path without files or data: evaluate(first_batch=...) per shard, write, read back, merge
    from experiments.honest import EvaluationConfig
    from experiments.honest import evaluate as evaluate_model
    from experiments.shards import merge_evaluation, read_shards, write_shard
    from tests.attacks.support import small_cnn

    model, source = small_cnn(0), small_cnn(4)
    x = torch.rand(9, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    config = EvaluationConfig(eps=(0.02, 0.05), samples=9, batch_size=2, steps=3, target_classes=2, queries=5,
                              convergence_steps=(1, 2), convergence_samples=2, dependence_samples=3)
    against = {"source": source}
    whole = evaluate_model(model, x, y, config, against=against, progress=False)
    identity = {"config": config.to_dict(), "checkpoint": "w", "against": ["s"], "dataset": "tiny"}
    folders = []
    for k in range(3):
        spec = parse_shard(f"{k}/3", 9, 2)
        part = evaluate_model(model, x[spec.start : spec.stop], y[spec.start : spec.stop], config,
                              against=against, progress=False, first_batch=spec.first_batch, checks=False)
        folders.append(tmp_path / f"s{k}")
        write_shard(folders[-1], spec, part, identity, "model", {"checkpoint": "", "against": []})
    merged = merge_evaluation(read_shards(folders), whole.attacks, whole.solver)
    assert merged.report.per_sample() == whole.report.per_sample()
    assert merged.protocol == whole.protocol and merged.passes == whole.passes
    assert {r.attack for r in whole.report.records if r.fooled.any()} >= {"APGD-CE-3"}  # the test can fail
    assert bool(whole.report.worst_case(0.05).any())
    assert bool(whole.report.record("APGD-CE transfer from source", 0.05).attacked.any())


@pytest.mark.slow
def test_a_merge_without_the_whole_set_checks_keeps_the_per_sample_rows(world) -> None:
    tmp_path, resnet, _ = world
    folders = shards(tmp_path, resnet, 2)
    full, quick = tmp_path / "full", tmp_path / "quick"
    assert evaluate.main(merge_args(tmp_path, folders, full)) == 0
    assert evaluate.main([*merge_args(tmp_path, folders, quick), "--no-checks"]) == 0
    assert (quick / "per_sample.csv").read_bytes() == (full / "per_sample.csv").read_bytes()
    results = json.loads((quick / "results.json").read_text())
    assert "--no-checks" in results["checks"]
    names = [f["name"] for f in results["models"]["res"]["flags"]]
    assert "more-iterations-help" not in names and "gradients" in names
