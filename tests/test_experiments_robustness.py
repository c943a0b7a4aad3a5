"""The main job end to end on tiny MNIST-format files, and its masking diagnostics."""

import json

import torch

from attacks import PGD
from experiments import robustness
from experiments.masking import SurrogateSolverAttack, gradient_agreement, solver_override
from nets.datasets import mnist as mnist_module
from nets.registry import build_model
from tests.test_data import write_mnist


def test_main_job_trains_attacks_writes_and_resumes(tmp_path, monkeypatch):
    files = write_mnist(tmp_path / "data", n_train=64, n_test=16)
    for name, digest in files["md5"].items():
        monkeypatch.setitem(mnist_module.MNIST_MD5, name, digest)
    argv = ["--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
            "--runs", str(tmp_path / "runs"),
            "--train-epochs", "1", "--train-limit", "32", "--samples", "4", "--eps", "0.3",
            "--pgd-steps", "2",
            "--difgsm-steps", "2", "--boundary-samples", "2", "--boundary-queries", "12",
            "--diagnostic-samples", "2",
            "--reference-tol", "1e-3", "--fixed-steps", "2",
            "--resnet-arg", "width=2", "--odenet-arg", "channels=2",
            "--batch-size", "8", "--no-progress", "--device", "cpu"]
    records = robustness.main(argv)
    assert set(records) == {"resnet", "odenet"}
    attacks = {row["attack"] for row in records["odenet"]["rows"]}
    expected = {"FGSM", "PGD", "DI2-FGSM", "Boundary", "PGD via dopri5 tol 0.001", "PGD via rk4 2 steps"}
    assert expected <= attacks
    for record in records.values():
        for row in record["rows"]:
            assert 0.0 <= row["robust_accuracy"] <= row["clean_accuracy"] + 1e-12
    assert "gradient_agreement" in records["odenet"] and "gradient_agreement" not in records["resnet"]
    saved = json.loads((tmp_path / "out" / "odenet.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(records["odenet"]["rows"]))
    assert (tmp_path / "out" / "results.csv").read_text().startswith("model,attack")
    # A second run reuses the finished records instead of recomputing them.
    (tmp_path / "out" / "resnet.json").write_text(json.dumps({**records["resnet"], "marker": 1}))
    again = robustness.main(argv)
    assert again["resnet"]["marker"] == 1


def test_solver_override_is_temporary_and_changes_the_solve():
    model = build_model("odenet_mnist_small", channels=4).eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    block = model.ode_block
    before = (block.method, block.rtol, block.atol, block.step_size)
    with solver_override(model, method="euler", step_size=block.t1):
        coarse = model(x)
    assert (block.method, block.rtol, block.atol, block.step_size) == before
    assert not torch.allclose(coarse, model(x))


def test_gradient_agreement_is_perfect_for_the_reference_itself_and_lower_for_a_crude_solver():
    torch.manual_seed(0)
    model = build_model("odenet_mnist_small", channels=4)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    tight = {"method": "dopri5", "rtol": 1e-6, "atol": 1e-6, "step_size": None}
    with solver_override(model, **tight):
        crude = {"one_euler_step": {"method": "euler", "step_size": 1.0}}
        report = gradient_agreement(model, x, y, tight, crude)
    assert report["deployed"]["median_cosine"] > 1 - 1e-6
    assert report["one_euler_step"]["median_relative_error"] > report["deployed"]["median_relative_error"]


def test_surrogate_attack_crafts_under_the_surrogate_solver():
    model = build_model("odenet_mnist_small", channels=4).eval()
    seen = []
    original_forward = model.ode_block.forward

    def spy(y):
        seen.append(model.ode_block.method)
        return original_forward(y)

    model.ode_block.forward = spy
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    attack = SurrogateSolverAttack(PGD(0.1, steps=1), method="rk4", step_size=0.25)
    x_adv = attack(model, x, torch.tensor([1, 2]))
    assert set(seen) == {"rk4"} and model.ode_block.method == "dopri5"
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_surrogate_warning_flags_a_stronger_transfer_attack():
    rows = [{"attack": "PGD", "eps": 0.1, "robust_accuracy": 0.60},
            {"attack": "PGD via rk4 20 steps", "eps": 0.1, "robust_accuracy": 0.20},
            {"attack": "PGD via dopri5 tol 1e-6", "eps": 0.1, "robust_accuracy": 0.595}]
    warnings = robustness.surrogate_warnings(rows)
    assert len(warnings) == 1 and "rk4" in warnings[0] and "masks gradients" in warnings[0]
