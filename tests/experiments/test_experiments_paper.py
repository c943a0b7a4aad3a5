"""``python -m experiments.paper``: every artefact at smoke scale on tiny random MNIST/CIFAR-10 files (files,
columns, model cache, resume), one-line errors, and the paper-scale configurations built without training."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from experiments.paper import ARTEFACTS, cli, fig1, fig2, fig3, table1, table2
from experiments.paper.specs import Plan
from nets.training import build_optimizer, build_scheduler
from storage.records import config_hash
from tests.nets.test_data import make_cifar, write_cifar_dir, write_mnist

COLUMNS = {
    "table1": {
        "dataset",
        "model",
        "architecture",
        "attack",
        "eps",
        "paper",
        "ours",
        "difference",
        "worst_case",
        "cap",
        "flags_fired",
    },
    "fig2": {
        "dataset",
        "model",
        "attack",
        "eps",
        "paper",
        "ours",
        "worst_case",
        "protocol_pgd",
        "cap",
        "flags_fired",
    },
    "fig3": {
        "dataset",
        "model",
        "attack",
        "eps",
        "paper",
        "ours",
        "worst_case",
        "protocol_pgd",
        "cap",
        "flags_fired",
    },
    "table2": {
        "method",
        "paper_clean",
        "ours_clean",
        "paper_pgd20",
        "ours_pgd20",
        "protocol_pgd40",
        "worst_case",
        "flags_fired",
    },
    "fig1": {"h", "curve", "eps", "paper", "ours", "worst_case", "cap", "flags_fired"},
    "mechanism": {
        "dataset",
        "model",
        "solver",
        "t1",
        "eps",
        "clean",
        "fgsm",
        "pgd40",
        "worst_case",
        "premium",
        "premium_low",
        "premium_high",
        "long_premium",
        "long_premium_low",
        "long_premium_high",
        "grad_median",
        "grad_p10",
        "grad_below_1e-8",
        "nfe_forward",
        "nfe_backward_adjoint",
        "field_gain",
        "cap",
        "flags_fired",
    },
}
FIGURES = {
    "table1": [],
    "fig2": ["fig2.png"],
    "fig3": ["fig3.png"],
    "table2": ["table2.png"],
    "fig1": ["fig1.png"],
    "mechanism": ["mechanism_robustness.png", "mechanism_gradients.png"],
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    write_mnist(root / "data", n_train=8, n_test=6)
    write_cifar_dir(root / "data", make_cifar(n_per_batch=4))
    torch.set_num_threads(1)
    argv = [
        "all",
        "--data-dir",
        str(root / "data"),
        "--scale",
        "smoke",
        "--out",
        str(root / "out"),
        "--no-progress",
        "--threads",
        "1",
    ]
    code = cli.main(argv)
    return root, argv, code


@pytest.mark.slow
def test_every_artefact_writes_its_files_and_columns(smoke_run) -> None:
    root, _, code = smoke_run
    assert code == 0
    for name in ARTEFACTS:
        folder = root / "out" / name
        for file in ("report.md", "results.csv", "results.json", "plan.json", *FIGURES[name]):
            assert (folder / file).is_file(), f"{name}/{file}"
        rows = list(csv.DictReader((folder / "results.csv").open()))
        assert rows and COLUMNS[name] <= set(rows[0]), name
        results = json.loads((folder / "results.json").read_text())
        assert results["scale"] == "smoke" and results["plan"]["artefact"] == name
        assert {"torch", "python", "cpu_count", "git_commit", "cpu_model", "cpu_capability"} <= set(
            results["environment"])
        assert results["run"]["cpu_model"] == results["environment"]["cpu_model"]  # the computing CPU
        assert results["wall_s"] > 0 and results["timings_s"]
        for summary in results["honest"].values():  # the honest column and its flags, for every model
            assert len(summary["worst_case"]) == len(summary["eps"])
            assert {"eps-sanity", "batch-dependence"} <= {flag["name"] for flag in summary["flags"]}
        report = (folder / "report.md").read_text()
        assert "worst case" in report and "Flags of the honest evaluation" in report and "Command:" in report
        if name != "table2":  # ε = 8/255 only: no constant image lies in any ball
            assert "ε-sanity of the paper attacks' numbers" in report
    # the paper's numbers beside ours, with the difference
    table = list(csv.DictReader((root / "out" / "table1" / "results.csv").open()))
    fgsm = [r for r in table if r["dataset"] == "mnist" and r["model"] == "odenet" and r["attack"] == "FGSM"]
    assert [float(r["paper"]) for r in fgsm] == [97.50, 97.48]  # smoke: the first and last ε of the grid
    assert all(abs(float(r["ours"]) - float(r["paper"]) - float(r["difference"])) < 0.02 for r in fgsm)
    ode = json.loads((root / "out" / "table1" / "results.json").read_text())["honest"]["mnist odenet"]
    assert ode["nfe"]["nfe_per_sample"] > 0  # NFE of the ODE models recorded
    fig1_rows = list(csv.DictReader((root / "out" / "fig1" / "results.csv").open()))
    assert {r["curve"] for r in fig1_rows} == {"clean", "FGSM ε=0.1", "FGSM ε=0.3", "FGSM ε=0.5"}
    # the clean row is on the whole test set (6 MNIST, 4 CIFAR-10 images here), the attacked rows on the
    # attacked subset (4);
    # model-level flags once per model (on its clean row), not on every ε row
    clean = [r for r in table if r["attack"] == "clean"]
    assert {(r["dataset"], r["images"]) for r in clean} == {("mnist", "6"), ("cifar10", "4")}
    assert {r["images"] for r in table if r["attack"] != "clean"} == {"4"}
    assert all(r["model_flags"] == "" for r in table if r["attack"] != "clean")
    assert all("eps-sanity" in r["flags_fired"] or not r["flags_fired"] for r in table)
    for name in ARTEFACTS:  # the run that computed the numbers is recorded in results.json and report.md
        run = json.loads((root / "out" / name / "results.json").read_text())["run"]
        assert run["computed"] and run["wall_s"] > 0 and run["commit"] is not None
        assert "Computed by commit" in (root / "out" / name / "report.md").read_text()
    # models another artefact trained are named as taken from the cache, not as computed by this one
    table2 = json.loads((root / "out" / "table2" / "results.json").read_text())["run"]
    assert "model odenet" in table2["reused"] and "model odenet" not in table2["computed"]
    assert "taken from the caches, so not in that time: model odenet" in (
        root / "out" / "table2" / "report.md").read_text()
    assert json.loads((root / "out" / "table1" / "results.json").read_text())["run"]["reused"] == []
    fig3 = json.loads((root / "out" / "fig3" / "results.json").read_text())["run"]  # Figure 2's models
    assert "model mnist odenet" in fig3["reused"]


@pytest.mark.slow
def test_mechanism_runs_every_model_variant_and_writes_every_output(smoke_run) -> None:
    root, _, code = smoke_run
    assert code == 0
    folder = root / "out" / "mechanism"
    rows = list(csv.DictReader((folder / "results.csv").open()))
    variants = {"t1=1", "t1=10", "t1=100", "base", "rk4 twin"}
    assert {(r["model"], float(r["eps"])) for r in rows} == {(m, 0.1) for m in variants}  # smoke: the first ε
    for row in rows:  # the premium (with its interval) for every ODE-net, none for the base model itself
        assert (row["premium"] == "") == (row["model"] == "base")
        assert (row["long_premium"] == "") == (row["model"] in ("base", "t1=1"))
        if row["premium"]:
            assert float(row["premium_low"]) <= float(row["premium"]) <= float(row["premium_high"])
        assert float(row["grad_median"]) >= 0 and (row["nfe_forward"] == "") == (row["model"] == "base")
    results = json.loads((folder / "results.json").read_text())
    twin = results["twin"]["mnist"]
    assert twin["steps"] == max(1, round(twin["from"]["steps_median"]))
    assert twin["spec"]["kwargs"]["method"] == "rk4"
    assert twin["spec"]["kwargs"]["step_size"] == pytest.approx(100.0 / twin["steps"])
    sweep = results["tolerance_sweep"]["mnist"]
    assert [row["tolerance"] for row in sweep] == [1e-1, 1e-3, 1e-5] and all(
        len(r["pgd40"]) == 1 for r in sweep  # one per ε of the grid
    )
    for label, measured in results["measurements"].items():
        assert {"gradient_norms", "steps", "backward_nfe", "field_gain", "fgsm"} <= set(measured), label
        assert len(results["honest"][label]["worst_case_robust"][0]) == results["honest"][label]["samples"]
    report = (folder / "report.md").read_text()
    assert "## Verdict" in report and "premium" in report and "swept without retraining" in report


def test_models_are_cached_by_configuration_and_reused(smoke_run) -> None:
    root, argv, _ = smoke_run
    keys = {spec.key() for module in ARTEFACTS.values() for _, spec in module.plan("smoke").models}
    mechanism_run = json.loads((root / "out" / "mechanism" / "results.json").read_text())
    keys |= {config_hash(twin["spec"]) for twin in mechanism_run["twin"].values()}  # picked after training
    folders = sorted((root / "out" / "models").iterdir())
    assert len(folders) == len(keys)  # Table 1's models serve Figures 2, 3 and Table 2's ODE-net
    assert {folder.name.rsplit("-", 1)[1] for folder in folders} == keys
    # a rerun reuses every model, evaluation and part: nothing is rewritten but the reports
    stored = sorted(
        p for p in (root / "out").rglob("*.json") if "parts" in p.parts or "evaluations" in p.parts
    )
    stored += sorted((root / "out" / "models").rglob("model.pt"))
    stamps = [p.stat().st_mtime_ns for p in stored]
    first_run = json.loads((root / "out" / "table1" / "results.json").read_text())["run"]
    assert cli.main(["table1", *argv[1:]]) == 0
    assert [p.stat().st_mtime_ns for p in stored] == stamps
    # a re-render keeps the record of the run that computed the numbers, and says it re-rendered them
    results = json.loads((root / "out" / "table1" / "results.json").read_text())
    assert results["run"] == first_run and results["rendered"]["wall_s"] >= 0
    assert "re-rendered from the cached results" in (root / "out" / "table1" / "report.md").read_text()


def test_failures_are_one_line_with_exit_code_2(smoke_run, tmp_path, capsys) -> None:
    root, argv, _ = smoke_run
    data = ["--data-dir", str(root / "data")]
    cases = [
        (["table9", *data, "--out", str(tmp_path)], "unknown artefact"),
        (["table1", "--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path)], "does not exist"),
        (["table1", *data, "--scale", "huge", "--out", str(tmp_path)], "unknown scale"),
        (["table1", *data, "--scale", "smoke"], "--out"),
    ]
    (tmp_path / "empty").mkdir()
    cases += [  # missing data: the advice names --download, which this command accepts
        (["table1", "--data-dir", str(tmp_path / "nowhere"), "--scale", "smoke", "--out", str(tmp_path)],
         "--download"),
        (["table1", "--data-dir", str(tmp_path / "empty"), "--scale", "smoke", "--out", str(tmp_path)],
         "--download"),
    ]
    for case, expected in cases:
        assert cli.main(case) == 2
        error = capsys.readouterr().err.strip()
        assert error.count("\n") == 0 and expected in error, error
    assert cli.build_parser().parse_args(["table1", "--out", "x", "--download"]).download
    # a run directory written by another configuration is refused, never mixed
    other = tmp_path / "other"
    (other / "table1").mkdir(parents=True)
    (other / "table1" / "plan.json").write_text(json.dumps({"key": "0123", "plan": {"scale": "cpu"}}))
    assert cli.main(["table1", *data, "--scale", "smoke", "--out", str(other), "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "another configuration" in error and "--out" in error
    with pytest.raises(Exception, match="another configuration"):
        cli.main(["table1", *data, "--scale", "smoke", "--out", str(other), "--no-progress", "--debug"])


# ------------------------------------------------------------------------------ paper scale, built untrained
def _lr_after(spec, epochs: int) -> float:
    optimizer = build_optimizer(torch.nn.Linear(1, 1).parameters(), spec.train)
    scheduler = build_scheduler(optimizer, spec.train, steps_per_epoch=1)
    for _ in range(epochs):
        optimizer.step()
        scheduler.step()
    return optimizer.param_groups[0]["lr"]


def _check_appendix_a(spec, dataset: str) -> None:
    channels, layers, t1, epochs, lr = (
        (128, 4, 100.0, 100, 1e-3) if dataset == "mnist" else (256, 5, 500.0, 200, 1e-4)
    )
    built = spec.build()
    block = built.ode_block
    assert (block.t1, block.method) == (t1, "dopri5")
    assert len(block.func.convs) == layers and all(c.out_channels == channels for c in block.func.convs)
    train = spec.train
    assert (train.optimizer, train.lr, train.epochs, train.batch_size) == ("adam", lr, epochs, 32)
    assert spec.limit_train is None
    # lr halved every 50 epochs
    for epoch in range(0, epochs, 50):
        assert _lr_after(spec, epoch) == pytest.approx(lr * 0.5 ** (epoch // 50))


def _check_he_et_al(spec) -> None:
    train = spec.train
    assert (train.optimizer, train.lr, train.momentum, train.weight_decay, train.batch_size) == (
        "sgd",
        0.1,
        0.9,
        1e-4,
        128,
    )
    assert (train.epochs, train.milestones, train.gamma, spec.limit_train) == (164, (82, 123), 0.1, None)
    assert _lr_after(spec, 82) == pytest.approx(0.01) and _lr_after(spec, 123) == pytest.approx(0.001)


def test_paper_scale_table1_and_figures_2_3_use_appendix_a_and_the_full_test_set() -> None:
    plans = [table1.plan("paper"), fig2.plan("paper"), fig3.plan("paper")]
    for plan in plans:
        assert isinstance(plan, Plan) and plan.evaluation.samples >= 10_000 and plan.verify_data
        assert plan.evaluation.protocol_steps == 40 and plan.evaluation.preset == "standard"
        assert plan.evaluation.ode_preset == "ode"
        models = plan.model_map
        for dataset in ("mnist", "cifar10"):
            _check_appendix_a(models[f"{dataset} odenet"], dataset)
            resnet = models[f"{dataset} resnet"]
            assert resnet.name == "resnet" and resnet.arguments["depth"] == 50
            _check_he_et_al(resnet)
    assert plans[0].model_map == plans[1].model_map == plans[2].model_map  # one cache entry each
    assert plans[0].eps_map["mnist"] == (0.2, 0.3, 0.4, 0.5)
    assert [round(e * 255) for e in plans[0].eps_map["cifar10"]] == [8, 12, 16, 20]
    assert max(plans[1].eps_map["mnist"]) == 0.5 and round(max(plans[1].eps_map["cifar10"]) * 255) == 50
    assert 0.0 in plans[1].eps_map["mnist"]
    assert plans[1].param_map["steps"] == 10
    assert (
        plans[2].param_map["queries"],
        plans[2].param_map["spherical_step"],
        plans[2].param_map["source_step"],
    ) == (1000, 0.1, 0.1)


def test_paper_scale_figure1_is_eleven_resnet56_with_he_et_al() -> None:
    plan = fig1.plan("paper")
    targets = [(label, spec) for label, spec in plan.models if label != "source"]
    assert [spec.arguments["step_size"] for _, spec in targets] == [10.0**-k for k in range(11)]
    for _, spec in targets:
        assert spec.name == "resnet56" and spec.dataset == "cifar10" and spec.augment
        _check_he_et_al(spec)
    built = targets[-1][1].build()
    steps = [m.step_size for m in built.modules() if hasattr(m, "step_size")]
    assert len(steps) == 27 and set(steps) == {1e-10}  # 9 residual blocks per stage, every one y + h f(y)
    source = plan.model_map["source"]
    assert source.name == "resnet8" and source.train.seed != targets[0][1].train.seed
    assert sum(1 for m in source.build().modules() if hasattr(m, "step_size")) == 3  # three residual blocks
    assert plan.eps_map["cifar10"] == (0.1, 0.3, 0.5)


def test_paper_scale_table2_is_preact_resnet18_with_the_three_trainings() -> None:
    plan = table2.plan("paper")
    models = plan.model_map
    assert list(models) == ["pgd-at", "trades", "yopo", "odenet"]
    losses = {m: models[m].loss for m in ("pgd-at", "trades", "yopo")}
    assert all(models[m].name == "preact_resnet18" and models[m].limit_train is None for m in losses)
    assert (losses["pgd-at"].kind, losses["pgd-at"].steps) == ("pgd-at", 10)
    assert (losses["trades"].kind, losses["trades"].steps, losses["trades"].beta) == ("trades", 10, 6.0)
    assert (losses["yopo"].kind, losses["yopo"].yopo_m, losses["yopo"].yopo_n) == ("yopo", 5, 3)
    assert all(loss.eps == pytest.approx(8 / 255) for loss in losses.values())
    assert models["odenet"] == table1.plan("paper").model_map["cifar10 odenet"]
    _check_appendix_a(models["odenet"], "cifar10")
    assert sum(p.numel() for p in models["pgd-at"].build().parameters()) > 11_000_000
    assert plan.param_map["pgd_steps"] == 20 and plan.eps_map["cifar10"] == (8 / 255,)
    assert plan.evaluation.samples >= 10_000


def test_cpu_scale_keeps_every_attack_protocol() -> None:
    for name, module in ARTEFACTS.items():
        cpu, paper = module.plan("cpu"), module.plan("paper")
        assert cpu.params == paper.params and cpu.eps == paper.eps, name
        assert cpu.evaluation.protocol_steps == 40 and cpu.key() != paper.key()
        assert cpu.notes, name  # every shrinkage is written into the report


class _MeanBrightness(torch.nn.Module):
    """Class 0 when the image's mean pixel exceeds 0.5, class 1 otherwise."""

    def forward(self, x):
        mean = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([mean - 0.5, 0.5 - mean], dim=1) * 10


def test_paper_attack_numbers_above_the_constant_image_cap_are_flagged() -> None:
    from types import SimpleNamespace

    from experiments.paper.measure import above_cap, constant_image_caps

    x = torch.cat([torch.full((3, 1, 4, 4), 0.23), torch.full((3, 1, 4, 4), 0.77)])
    y = torch.tensor([1, 1, 1, 0, 0, 0])
    entry = SimpleNamespace(model=_MeanBrightness())
    tiny, large = constant_image_caps(entry, (x, y), [1e-4, 0.5], batch_size=4)
    assert tiny is None  # no gray (multiples of 0.05) within 1e-4 of 0.23 or 0.77: no bound
    assert large == 0.0  # a gray on the other side of 0.5 lies in every ball
    assert above_cap(0.34, large) and not above_cap(0.0, large) and not above_cap(0.9, tiny)


def test_plan_prints_every_model_and_evaluation_with_its_estimate_and_runs_nothing(
    tmp_path, monkeypatch, capsys
) -> None:
    from experiments.paper import estimate

    fixed = estimate.Calibration(train_s=1e-3, grad_s=2e-3, forward_s=5e-4, train_flops=7e9, grad_flops=7e9,
                                 saved_bytes=2**20, parameters=1000, batch=8)
    monkeypatch.setattr(estimate, "calibrate", lambda spec: fixed)
    write_mnist(tmp_path / "data", n_train=8, n_test=6)
    argv = ["table1", "--scale", "smoke", "--plan", "--data-dir", str(tmp_path / "data"), "--out",
            str(tmp_path / "out")]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written
    plan = table1.plan("smoke")
    for label, spec in plan.models:
        (line,) = [row for row in printed.splitlines() if row.startswith(f"  {label} ") and "ep ×" in row]
        # 1 epoch × 256 images × 1 ms + 32 test images × 0.5 ms = 0.272 s; GPU 256 × 7 GFLOP ÷ 7 TFLOP/s
        assert spec.name in line and "1 ep × 256 img, batch 32" in line and " 0 s " in line
        assert f"{(1000 * 4 * 4 + 2**20 * 32) / 2**20:.1f} MiB" in line  # Adam: 4 copies of the weights
    evaluations = [row for row in printed.splitlines() if "quick" in row]
    assert len(evaluations) == len(plan.models)
    assert "UNCALIBRATED" in printed and "Basis:" in printed


@pytest.mark.slow  # ~10 s on a loaded machine
def test_calibration_measures_a_real_model() -> None:
    from experiments.paper import estimate

    spec = table1.plan("smoke").model_map["mnist resnet"]
    measured = estimate.calibrate(spec)
    assert measured.parameters == sum(p.numel() for p in spec.build().parameters())
    assert 2 <= measured.batch <= 32 and measured.saved_bytes > 0
    assert min(measured.train_s, measured.grad_s, measured.forward_s) > 0
    # a training step and an input-gradient pass both run the network forward and backward once
    assert measured.train_flops == pytest.approx(measured.grad_flops, rel=0.5)


def test_cpu_model_names_the_cpu_from_cpuinfo_or_platform(tmp_path) -> None:
    from experiments.paper.report import cpu_model

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n"
                       "flags\t: avx2\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 7B13"
    assert cpu_model(tmp_path / "absent")  # falls back to platform's name, never empty


def test_only_the_smoke_scale_cuts_the_eps_grids() -> None:
    from experiments.paper import mechanism, scales

    for scale in ("cpu", "paper"):
        assert table1.plan(scale).eps_map == dict(table1.EPS)
        curves = {"mnist": scales.MNIST_CURVE_EPS, "cifar10": scales.CIFAR_CURVE_EPS}
        assert fig2.plan(scale).eps_map == curves
        assert mechanism.plan(scale).eps_map == dict(mechanism.EPS)
    assert table1.plan("smoke").eps_map["mnist"] == (0.2, 0.5)
    assert fig2.plan("smoke").eps_map["mnist"] == (0.0, 0.5)
    assert mechanism.plan("smoke").eps_map["mnist"] == (0.1,)
