"""The AVX2 pin of our commands (experiments.isa): set on AVX-512 CPUs only, never over an explicit setting,
off with NR_NATIVE_ISA=1, and in effect for torch when a command imports ``experiments`` first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from experiments.isa import AVX2_PINS, NATIVE_VARIABLE, cpu_flags, pin_kernels_to_avx2

AVX512 = frozenset({"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw"})
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})


def test_an_avx512_cpu_is_pinned_to_avx2() -> None:
    environ: dict[str, str] = {}
    assert pin_kernels_to_avx2(environ, AVX512) == AVX2_PINS
    assert environ == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.mark.parametrize("flags", [AVX2, frozenset(), frozenset({"fp", "asimd", "sve"})])
def test_other_cpus_are_left_alone(flags) -> None:
    environ: dict[str, str] = {}
    assert pin_kernels_to_avx2(environ, flags) == {} and environ == {}


def test_an_explicit_setting_wins_and_the_opt_out_pins_nothing() -> None:
    environ = {"ATEN_CPU_CAPABILITY": "avx512"}
    assert pin_kernels_to_avx2(environ, AVX512) == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert environ["ATEN_CPU_CAPABILITY"] == "avx512"
    for value in ("1", "true", "YES"):
        environ = {NATIVE_VARIABLE: value}
        assert pin_kernels_to_avx2(environ, AVX512) == {} and environ == {NATIVE_VARIABLE: value}
    environ = {NATIVE_VARIABLE: "0"}
    assert pin_kernels_to_avx2(environ, AVX512) == AVX2_PINS


def test_cpu_flags_reads_the_first_flags_line(tmp_path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512f\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f"}
    assert cpu_flags(tmp_path / "absent") == frozenset()
    (tmp_path / "empty").write_text("processor\t: 0\n")
    assert cpu_flags(tmp_path / "empty") == frozenset()


def test_a_command_runs_torch_without_avx512_kernels_unless_asked() -> None:
    """End to end: importing ``experiments`` before torch (what ``python -m experiments.X`` does) leaves
    torch on AVX2 kernels or below; with the opt-out, torch runs the CPU's own."""
    code = "import experiments, torch; print(torch.backends.cpu.get_cpu_capability())"
    environ = {k: v for k, v in os.environ.items() if k not in (*AVX2_PINS, NATIVE_VARIABLE)}
    pinned = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert pinned != "AVX512"
    native = subprocess.run([sys.executable, "-c", code], env={**environ, NATIVE_VARIABLE: "1"},
                            capture_output=True, text=True, check=True).stdout.strip()
    expected = "AVX512" if {"avx2", "avx512f"} <= cpu_flags() else pinned
    assert native == expected
