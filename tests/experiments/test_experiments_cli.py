"""The command-line conventions (``experiments.cli``), the one atomic writer and the record store."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import stat

import pytest
import torch

from experiments import cli
from nets.datasets import DatasetNotFoundError
from nets.training import TrainConfig, atomic_torch_save, atomic_write_json
from storage.atomic import atomic_write, atomic_write_text
from storage.records import RecordStore

COMMANDS = ("experiments.train", "experiments.robustness", "experiments.adversarial_training",
            "experiments.bounds")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_every_atomic_write_ends_0644_and_leaves_nothing_behind_on_failure(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.txt", "text")
    atomic_write_json({"a": 1}, tmp_path / "b.json")
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    for name in ("a.txt", "b.json", "c.pt"):
        assert mode(tmp_path / name) == 0o644
    assert torch.load(tmp_path / "c.pt", weights_only=True)["w"].sum() == 2

    def interrupted(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.txt", interrupted)
    assert (tmp_path / "a.txt").read_text() == "text"  # the complete old file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.pt"]


def _command(behaviour):
    def main(argv, outputs=None):
        outputs.add("/somewhere/result.csv")
        return behaviour()

    return main


def test_run_turns_errors_into_one_line_with_the_right_exit_status(capsys):
    def usage():
        raise cli.UsageError("--eps must lie in [0, 1]\nsecond line")

    assert cli.run(_command(usage), []) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --eps must lie in [0, 1]; second line", "wrote /somewhere/result.csv"]

    def missing_data():
        raise DatasetNotFoundError("data directory '/nope' does not exist or is not a directory")

    assert cli.run(_command(missing_data), []) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()[:1]
    assert "/nope" in line and "--data-dir" in line and "--download" in line

    def bug():
        raise RuntimeError("solver exploded")

    assert cli.run(_command(bug), []) == 1
    line = capsys.readouterr().err.strip().splitlines()[0]
    assert line.startswith("error: RuntimeError: solver exploded") and "--debug" in line
    with pytest.raises(RuntimeError):
        cli.run(_command(bug), ["--debug"])

    def ctrl_c():
        raise KeyboardInterrupt

    assert cli.run(_command(ctrl_c), []) == 130
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("interrupted") and "/somewhere/result.csv" in line and "resume" in line

    assert cli.run(_command(lambda: {"fine": 1}), []) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "wrote /somewhere/result.csv"
    assert cli.run(_command(lambda: 1), []) == 1  # an int result is the exit status

    def exit_usage():
        raise cli.UsageExit("unknown model 'x'")

    assert cli.run(_command(exit_usage), []) == 2
    assert capsys.readouterr().err.strip() == "error: unknown model 'x'"


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_documents_every_option_and_shares_the_common_ones(module):
    parser = importlib.import_module(module).build_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    assert {"--threads", "--debug"} <= options
    if "--data-dir" in options:
        assert "--download" in options
    assert all(action.help for action in parser._actions)
    text = parser.format_help()
    assert "(default: 0)" in text  # --seed: defaults are shown, also falsy ones
    doc = importlib.import_module(module).__doc__.strip()
    assert doc.splitlines()[-1].strip() in text  # the whole description, not its first line only


def test_threads_option_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        parser = cli.make_parser("x", "doc")
        cli.setup(parser.parse_args(["--threads", "1"]))
        assert torch.get_num_threads() == 1
        with pytest.raises(SystemExit):
            parser.parse_args(["--threads", "0"])
    finally:
        torch.set_num_threads(before)
    assert cli.DEFAULT_THREADS == max(1, (os.cpu_count() or 1) // 2)


def test_record_store_reuses_only_records_made_with_the_same_configuration(tmp_path):
    store = RecordStore(tmp_path)
    config = {"eps": 0.1, "samples": 200, "settings": {"steps": 20}}
    assert store.get(("odenet", "PGD", 0.1), config) is None
    store.put(("odenet", "PGD", 0.1), config, {"robust_accuracy": 0.5})
    again = RecordStore(tmp_path)
    assert again.get(("odenet", "PGD", 0.1), dict(config)) == {"robust_accuracy": 0.5}
    assert "resumed 1 complete record(s)" in again.summary()[0]
    changed = RecordStore(tmp_path)
    assert changed.get(("odenet", "PGD", 0.1), {**config, "settings": {"steps": 40}}) is None
    changed.put(("odenet", "PGD", 0.1), {**config, "settings": {"steps": 40}}, {"robust_accuracy": 0.4})
    (line,) = changed.summary()
    assert "recomputed 1 record(s)" in line and "settings.steps: 20 -> 40" in line
    assert line.endswith("odenet PGD 0.1")
    forced = RecordStore(tmp_path, force=True)
    assert forced.get(("odenet", "PGD", 0.1), {**config, "settings": {"steps": 40}}) is None
    (tmp_path / "odenet__PGD__0.1.json").write_text("{half")
    assert RecordStore(tmp_path).get(("odenet", "PGD", 0.1), config) is None  # unreadable: recomputed


def test_train_config_round_trips_and_names_unknown_settings():
    config = TrainConfig(epochs=2, optimizer="sgd", lr=0.1, nesterov=True, schedule="onecycle")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.replace(lr=0.05).lr == 0.05 and config.replace(lr=0.05).digest() != config.digest()
    assert config.digest() == TrainConfig(epochs=2, optimizer="sgd", lr=0.1, nesterov=True,
                                          schedule="onecycle").digest()
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"epochs": 1, "learning_rate": 0.1})
    with pytest.raises(ValueError, match="lr must be"):
        config.replace(lr=-1.0)


def test_help_formatter_keeps_the_description_verbatim():
    parser = cli.make_parser("demo", "First line.\n\n    indented example --flag\nLast sentence ends here.")
    parser.add_argument("--n", type=int, default=3, help="how many")
    text = parser.format_help()
    assert "    indented example --flag" in text and "Last sentence ends here." in text
    assert "how many (default: 3)" in text
    assert isinstance(parser.formatter_class("x"), argparse.ArgumentDefaultsHelpFormatter)


def test_ctrl_c_during_a_progress_bar_prints_its_line_on_a_fresh_line():
    import io

    from tqdm import tqdm

    screen = io.StringIO()

    def interrupted_mid_bar():
        bar = tqdm(total=10, desc="suite: APGD-CE @ ε=0.1", file=screen, ascii=True)
        bar.update(3)  # left open, as a bar is when Ctrl-C arrives inside the loop
        raise KeyboardInterrupt

    assert cli.run(_command(interrupted_mid_bar), [], stream=screen) == 130
    text = screen.getvalue()
    before, line = text[: text.index("interrupted")], text[text.index("interrupted"):]
    assert before.endswith(("\n", "\r")) and "3/10" in before and line.count("\n") == 1


def test_help_names_no_source_only_section():
    from experiments import robustness

    text = robustness.build_parser().format_help()
    assert "RECIPES below" not in text and "docs/experiments.md" in text


def test_shown_command_takes_this_machines_folders_out(tmp_path):
    """A report's command names no folder of the machine that ran it: ``--data-dir`` shows ``DIR`` and an
    absolute path under the working directory shows relative; other arguments stay as given."""
    from experiments.cli import shown_command

    out = tmp_path / "runs" / "robustness"
    argv = ["--data-dir", "/srv/data/mnist", "--out", str(out), "--eps", "0.1",
            "--checkpoint", "/elsewhere/m.pt"]
    shown = shown_command("python -m experiments.evaluate", argv, cwd=tmp_path)
    assert shown == ("python -m experiments.evaluate --data-dir DIR --out runs/robustness --eps 0.1 "
                     "--checkpoint /elsewhere/m.pt")
    assert shown_command("prog", ["--data-dir=/x y", "a b"], cwd=tmp_path) == "prog --data-dir=DIR 'a b'"
