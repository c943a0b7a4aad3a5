"""White-box attacks (FGSM, PGD, DI2-FGSM): the attack contract, exact analytic cases, input diversity."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from attacks import DI2FGSM, FGSM, PGD, InputDiversity, eval_mode
from tests.attacks.support import linear_binary, random_images, small_cnn

MODEL = small_cnn()


def white_box_attacks(eps: float) -> list:
    return [
        FGSM(eps),
        PGD(eps, steps=3),
        PGD(eps, alpha=eps / 2, steps=2, restarts=2),
        PGD(eps, steps=2, random_start=False, targeted=True),
        DI2FGSM(eps, steps=2),
        DI2FGSM(eps, steps=2, decay=1.0, output_size="input", diversity_prob=1.0),
        DI2FGSM(eps, steps=2, variant="batch", resize_rate=0.9, random_start=True),
    ]


@given(eps=st.sampled_from([0.0, 1e-3, 0.05, 0.3, 1.0]), seed=st.integers(0, 2**16),
       which=st.integers(0, 6))
def test_results_stay_in_the_eps_ball_and_in_the_unit_box(eps: float, seed: int, which: int) -> None:
    x, y = random_images(5, seed)
    x[0].zero_()  # pixels exactly at the box boundary
    x[1].fill_(1.0)
    attack = white_box_attacks(eps)[which]
    x_adv = attack(MODEL, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert bool(torch.isfinite(x_adv).all())
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


@pytest.mark.parametrize("which", range(7))
def test_zero_eps_returns_the_input_exactly(which: int) -> None:
    x, y = random_images(6, 1)
    x_adv = white_box_attacks(0.0)[which](MODEL, x, y)
    assert torch.equal(x_adv, x)


def test_fgsm_on_a_linear_binary_classifier_is_the_analytic_optimum() -> None:
    generator = torch.Generator().manual_seed(3)
    w = torch.randn(1, 4, 4, generator=generator) * 0.3
    w[w.abs() < 1e-3] = 0.1  # sign(w) well defined everywhere
    model = linear_binary(w, bias=0.05)
    eps = 0.1
    x = 0.1 + 0.8 * torch.rand(32, 1, 4, 4, generator=generator)  # inside [eps, 1 - eps]: no clipping
    y = torch.randint(0, 2, (32,), generator=generator)
    s = (2 * y - 1).float().view(-1, 1, 1, 1)  # +1 for class 1, -1 for class 0
    expected = x - eps * torch.sign(w) * s
    assert torch.equal(FGSM(eps)(model, x, y), expected)
    # targeted towards t: the optimum moves along +s_t sign(w)
    t = 1 - y
    s_t = (2 * t - 1).float().view(-1, 1, 1, 1)
    assert torch.equal(FGSM(eps, targeted=True)(model, x, t), x + eps * torch.sign(w) * s_t)
    # with clipping the result is the clipped optimum
    x_edge = torch.rand(32, 1, 4, 4, generator=generator)
    assert torch.equal(FGSM(eps)(model, x_edge, y), (x_edge - eps * torch.sign(w) * s).clamp(0, 1))


def test_fgsm_robust_accuracy_on_a_linear_model_matches_the_margin_criterion() -> None:
    # without clipping, FGSM is optimal for a linear model: x is robust iff s (w.x + b) > eps ||w||_1
    generator = torch.Generator().manual_seed(4)
    w = torch.randn(16, generator=generator) * 0.5
    model = linear_binary(w, bias=-0.1)
    x = 0.2 + 0.6 * torch.rand(200, 16, generator=generator)
    y = ((x @ w - 0.1) > 0).long()
    y[:20] = 1 - y[:20]
    eps = 0.05
    margin = (2 * y - 1).float() * (x @ w - 0.1)
    analytic = (margin > eps * w.abs().sum()).float().mean()
    with torch.no_grad():
        measured = (model(FGSM(eps)(model, x, y)).argmax(1) == y).float().mean()
    assert float(measured) == pytest.approx(float(analytic), abs=1 / 200)


def _losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def test_pgd_loss_is_at_least_fgsm_loss() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
    x, y = random_images(64, 7)
    eps = 0.1
    fgsm = _losses(model, FGSM(eps)(model, x, y), y)
    pgd = _losses(model, PGD(eps, alpha=eps / 4, steps=20, random_start=False)(model, x, y), y)
    clean = _losses(model, x, y)
    assert float(pgd.mean()) >= float(fgsm.mean()) > float(clean.mean())
    assert float((pgd >= fgsm - 1e-6).float().mean()) >= 0.95


def test_pgd_restarts_only_improve_and_objective_curve_rises() -> None:
    x, y = random_images(32, 2)
    eps = 0.2
    single = PGD(eps, steps=5, seed=11)
    multi = PGD(eps, steps=5, restarts=4, seed=11)
    result = single.run(MODEL, x, y)
    with torch.no_grad():
        fooled_single = MODEL(result.x_adv).argmax(1) != y
        fooled_multi = MODEL(multi(MODEL, x, y)).argmax(1) != y
    assert bool((fooled_multi | ~fooled_single).all())  # a superset: the first restart is the single run
    curve = result.stats["objective_curve"][0]
    assert len(curve) == 5 and curve[-1] > curve[0]
    assert result.stats["zero_gradient_fraction"] == 0.0
    assert result.stats["nonfinite_gradient_fraction"] == 0.0


def test_targeted_pgd_reaches_the_target_on_a_linear_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    x, _ = random_images(40, 5)
    target = torch.arange(40) % 10
    x_adv = PGD(0.5, steps=20, targeted=True)(model, x, target)
    with torch.no_grad():
        hit = (model(x_adv).argmax(1) == target).float().mean()
    assert float(hit) > 0.9


def test_seeded_attacks_are_reproducible_and_reseed_restarts_the_stream() -> None:
    x, y = random_images(8, 3)
    a, b = PGD(0.1, steps=2, seed=5), PGD(0.1, steps=2, seed=5)
    first = a(MODEL, x, y)
    assert torch.equal(first, b(MODEL, x, y))
    second = a(MODEL, x, y)
    assert not torch.equal(first, second)  # the stream moved on
    a.reseed()
    assert torch.equal(a(MODEL, x, y), first)


class _ModeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = small_cnn()
        self.dropout = nn.Dropout(0.5)
        self.norm = nn.BatchNorm1d(10)
        self.seen_training: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen_training.append(self.training)
        return self.norm(self.dropout(self.body(x)))


def test_attacks_run_in_eval_mode_and_restore_every_submodule() -> None:
    model = _ModeRecorder()
    model.train()
    model.norm.eval()  # mixed modes must come back exactly
    x, y = random_images(4, 0)
    running_mean = model.norm.running_mean.clone()
    for attack in white_box_attacks(0.1):
        attack(model, x, y)
    assert not any(model.seen_training)
    assert model.training and model.dropout.training and not model.norm.training
    assert torch.equal(model.norm.running_mean, running_mean)
    with eval_mode(model):
        assert not model.training
    assert model.training and not model.norm.training


@pytest.mark.parametrize(
    ("x", "y", "error"),
    [
        (torch.rand(2, 1, 4, 4) * 2, torch.zeros(2, dtype=torch.long), ValueError),
        (torch.full((2, 1, 4, 4), float("nan")), torch.zeros(2, dtype=torch.long), ValueError),
        (torch.rand(2, 1, 4, 4), torch.zeros(3, dtype=torch.long), ValueError),
        (torch.rand(2, 1, 4, 4), torch.zeros(2), TypeError),
        (torch.randint(0, 2, (2, 1, 4, 4)), torch.zeros(2, dtype=torch.long), TypeError),
        (torch.rand(2, 1, 4, 4), torch.full((2,), 10), ValueError),  # label out of range for 10 classes
        (torch.rand(2, 1, 4, 4), torch.full((2,), -1), ValueError),
        (torch.rand(2), torch.zeros(2, dtype=torch.long), ValueError),
    ],
)
def test_bad_inputs_raise_clear_errors(x: torch.Tensor, y: torch.Tensor, error: type) -> None:
    with pytest.raises(error):
        PGD(0.1, steps=1)(MODEL, x, y)


def test_bad_hyper_parameters_raise() -> None:
    with pytest.raises(ValueError):
        FGSM(-0.1)
    with pytest.raises(ValueError):
        PGD(float("nan"))
    with pytest.raises(ValueError):
        PGD(0.1, steps=0)
    with pytest.raises(TypeError):
        PGD(0.1, steps=2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DI2FGSM(0.1, resize_rate=0.9)  # the paper variant enlarges
    with pytest.raises(ValueError):
        DI2FGSM(0.1, diversity_prob=1.5)


def test_empty_batch_is_returned_unchanged() -> None:
    x = torch.rand(0, 1, 8, 8)
    assert PGD(0.1)(MODEL, x, torch.zeros(0, dtype=torch.long)).shape == x.shape


def test_zero_and_nan_gradients_are_reported_and_never_produce_nan_inputs() -> None:
    class Quantized(nn.Module):  # piecewise constant: the input gradient is identically zero
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return MODEL(torch.round(x * 4) / 4)

    class NaNGradient(nn.Module):  # finite logits, NaN input gradient (sqrt at 0)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return MODEL(x) + torch.sqrt((x - x.detach()).flatten(1)).sum(1, keepdim=True)

    x, y = random_images(6, 4)
    attack = PGD(0.1, steps=3, random_start=False)
    masked = attack.run(Quantized(), x, y)
    assert torch.equal(masked.x_adv, x)  # masked: PGD cannot move
    assert masked.stats["zero_gradient_fraction"] == 1.0
    broken = attack.run(NaNGradient(), x, y)
    assert bool(torch.isfinite(broken.x_adv).all())
    assert broken.stats["nonfinite_gradient_fraction"] == 1.0


# -- input diversity ---------------------------------------------------------------------------------------


def test_paper_input_diversity_is_a_per_sample_enlarge_and_pad() -> None:
    transform = InputDiversity(resize_rate=1.5, probability=1.0)  # 8x8 -> rnd in [8, 12), canvas 12x12
    x = torch.ones(64, 1, 8, 8)
    out = transform(x, torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 12, 12)
    sizes = set()
    for image in out[:, 0]:
        rows, cols = image.sum(1).nonzero().squeeze(1), image.sum(0).nonzero().squeeze(1)
        size = rows.numel()
        assert 8 <= size < 12 and cols.numel() == size  # a square block of ones, zeros elsewhere
        assert float(image.sum()) == size * size
        assert rows.max() - rows.min() + 1 == size and int(rows.max()) < 12
        sizes.add((size, int(rows.min()), int(cols.min())))
    assert len(sizes) > 5  # every sample draws its own size and offset


def test_paper_input_diversity_resizes_by_nearest_neighbour() -> None:
    x = (torch.arange(16.0) + 1).view(1, 1, 4, 4).expand(32, 1, 4, 4).contiguous()
    out = InputDiversity(resize_rate=2.0, probability=1.0)(x, torch.Generator().manual_seed(1))
    for image in out[:, 0]:
        matches = 0
        for size in range(4, 8):
            source = (torch.arange(size) * 4) // size  # nearest neighbour: floor(i * H / rnd)
            block = x[0, 0][source][:, source]
            for top in range(0, 8 - size):
                for left in range(0, 8 - size):
                    inside = image[top:top + size, left:left + size]
                    outside = float(image.sum() - inside.sum())
                    matches += int(torch.equal(inside, block) and outside == 0.0)
        assert matches == 1


def test_input_diversity_identity_cases() -> None:
    x, _ = random_images(10, 0)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(InputDiversity(probability=0.0, output_size="input")(x, generator), x)
    canvas = InputDiversity(resize_rate=2.0, probability=0.0)(x, generator)
    assert torch.equal(canvas, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    assert torch.equal(InputDiversity(variant="batch", probability=0.0, resize_rate=0.9)(x, generator), x)


def test_batch_variant_applies_one_transform_to_the_whole_batch() -> None:
    x = torch.ones(16, 1, 8, 8)
    transform = InputDiversity(resize_rate=0.7, probability=1.0, variant="batch")
    out = transform(x, torch.Generator().manual_seed(2))
    assert out.shape == x.shape
    assert torch.equal(out, out[:1].expand_as(out))
    assert float(out.sum()) < x.sum()  # shrunk and padded


def test_di2fgsm_without_diversity_equals_iterative_fgsm() -> None:
    x, y = random_images(8, 6)
    eps, steps = 0.1, 4
    di = DI2FGSM(eps, steps=steps, diversity_prob=0.0, output_size="input")(MODEL, x, y)
    ifgsm = PGD(eps, alpha=eps / steps, steps=steps, random_start=False)(MODEL, x, y)
    assert torch.equal(di, ifgsm)


def test_di2fgsm_on_a_fixed_size_model_names_the_canvas_and_the_fix() -> None:
    # Before: the enlarged canvas reached a Linear head as "mat1 and mat2 shapes cannot be multiplied".
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="output_size='input'"):
        DI2FGSM(eps=0.1, steps=2, diversity_prob=1.0)(model, x, y)
    assert DI2FGSM(eps=0.1, steps=2, output_size="input")(model, x, y).shape == x.shape


def test_di2fgsm_with_a_float64_input_and_a_float32_model_names_the_dtypes() -> None:
    # Before: the dtype error was blamed on "a fixed-size head" (wrong advice).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    x, y = torch.rand(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    for output_size in ("canvas", "input"):
        expected = "input is float64 but the model's parameters are float32"
        with pytest.raises(ValueError, match=expected) as error:
            DI2FGSM(eps=0.1, steps=2, diversity_prob=1.0, output_size=output_size)(model, x, y)
        assert "fixed-size" not in str(error.value)
    assert DI2FGSM(eps=0.1, steps=2)(model, x.float(), y).dtype == torch.float32


def test_a_single_logit_model_is_refused_and_a_graph_input_is_accepted_quietly() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="1 logit per sample"):  # CE over one class: no gradient at all
        PGD(eps=0.1, steps=2)(nn.Sequential(nn.Flatten(), nn.Linear(64, 1)), x, y)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FGSM(eps=0.1)(model, x.clone().requires_grad_(), y)
