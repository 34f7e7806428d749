"""`securemark issue`, `customers`, `verify` and `demo` through the CLI, bad input included."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from securemark_mpc.cli import main
from securemark_mpc.commands import demo
from securemark_mpc.config import TrainConfig
from securemark_mpc.models import FORMAT, build_model, make_spec, save_model
from securemark_mpc.plaintext import write_plaintext_run
from securemark_mpc.run_folder import RunFolder

ISSUED = ("alice", "bob")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunFolder:
    """A plaintext-trained run with copies issued to alice and bob."""
    folder = RunFolder(tmp_path_factory.mktemp("cli") / "run")
    write_plaintext_run(folder, TrainConfig())
    for name in ISSUED:
        assert (
            main(["issue", "--run", str(folder.root), "--customer", name, "--key-seed", "11"]) == 0
        )
    return folder


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> Path:
    """A model of the same architecture trained independently (another seed, fewer epochs)."""
    folder = RunFolder(tmp_path_factory.mktemp("stranger") / "run")
    write_plaintext_run(folder, TrainConfig(seed=5, epochs=3))
    return folder.model_path


def verify_json(run: RunFolder, suspect: Path, capsys) -> tuple[int, dict]:
    code = main(["verify", "--run", str(run.root), str(suspect), "--json"])
    return code, json.loads(capsys.readouterr().out)


def assert_clean_error(code: int, capsys, *, command: str, match: str) -> None:
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"securemark {command}: error:")
    assert match in lines[0]


def test_issue_writes_copies_and_lists_customers(run, capsys):
    for name in ISSUED:
        assert run.copy_path(name).is_file()
    assert main(["customers", "--run", str(run.root), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["customers"]
    assert [(r["name"], r["index"], r["bits"]) for r in rows] == [
        ("alice", 0, 304),
        ("bob", 1, 304),
    ]
    assert main(["customers", "--run", str(run.root)]) == 0
    out = capsys.readouterr().out
    assert "alice" in out and "bob" in out


def test_issuing_a_name_twice_is_an_error_unless_reissue(run, capsys):
    code = main(["issue", "--run", str(run.root), "--customer", "alice"])
    assert_clean_error(code, capsys, command="issue", match="--reissue")
    assert main(["issue", "--run", str(run.root), "--customer", "alice", "--reissue"]) == 0
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["../evil", "", " padded"])
def test_bad_customer_names_exit_2(run, capsys, name):
    code = main(["issue", "--run", str(run.root), "--customer", name])
    assert_clean_error(code, capsys, command="issue", match="customer name")


@pytest.mark.parametrize("option", [["--bits", "0"], ["--key-seed", "-1"]])
def test_bad_issue_options_exit_2(run, capsys, option):
    code = main(["issue", "--run", str(run.root), "--customer", "zed", *option])
    assert_clean_error(code, capsys, command="issue", match="must be")


def test_a_second_code_length_is_refused(run, capsys):
    code = main(["issue", "--run", str(run.root), "--customer", "carol", "--bits", "512"])
    assert_clean_error(code, capsys, command="issue", match="other settings")


@pytest.mark.parametrize("name", ISSUED)
def test_verify_traces_a_copy_to_its_customer(run, capsys, name):
    code, verdict = verify_json(run, run.copy_path(name), capsys)
    assert code == 0
    assert verdict["ours"] is True and verdict["accused"] == [name]
    assert set(verdict["scores"]) == set(ISSUED)
    assert verdict["scores"][name] >= verdict["threshold"]
    assert verdict["accusations"][0]["p_value"] <= verdict["epsilon"]
    assert verdict["bound"] == "chernoff-union" and math.isfinite(verdict["ours_p_value"])
    # both marks move the carrier's units, but an untouched copy reports nothing undone
    assert verdict["alignment"]["changed"] is False


def test_verify_says_why_in_words(run, capsys):
    assert main(["verify", "--run", str(run.root), str(run.copy_path("bob"))]) == 0
    out = capsys.readouterr().out
    assert "ours:" in out and "accused: bob" in out and "threshold" in out


def test_an_independent_model_is_not_ours(run, stranger, capsys):
    code, verdict = verify_json(run, stranger, capsys)
    assert code == 1
    assert verdict["ours"] is False and verdict["accused"] == []


def test_a_run_without_customers_traces_nobody(tmp_path, run, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    for name in ("config.json", "model.pt", "fingerprint_key.json"):
        (empty / name).write_bytes((run.root / name).read_bytes())
    code, verdict = verify_json(RunFolder(empty), run.copy_path("alice"), capsys)
    assert code == 1 and verdict["accused"] == [] and verdict["customers"] == 0
    assert not (empty / "registry.sqlite").exists()


class _Touch:
    """Pickles to a call of Path.touch: executed only if the loader unpickles code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def _bad_files(run: RunFolder, folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected words in the error)."""
    state = torch.load(run.copy_path("alice"), weights_only=True)["state_dict"]
    files: dict[str, tuple[Path, str]] = {}

    def put(name: str, payload, match: str, suffix: str = ".pt") -> None:
        path = folder / f"{name}{suffix}"
        if isinstance(payload, bytes):
            path.write_bytes(payload)
        else:
            torch.save(payload, path)
        files[name] = (path, match)

    put(
        "truncated", run.copy_path("alice").read_bytes()[:2000], "not a readable PyTorch model file"
    )
    put("text", b"this is not a model\n", "not a readable PyTorch model file")
    put("empty", b"", "not a readable PyTorch model file")
    put("list", [torch.zeros(3)], "not a model state dict")
    put(
        "forged_spec",
        {"format": FORMAT, "spec": {}, "state_dict": state},
        "unreadable architecture",
    )
    spec = torch.load(run.model_path, weights_only=True)["spec"]
    put("forged_state", {"format": FORMAT, "spec": spec, "state_dict": [1]}, "without a state dict")
    wrong = dict(state, **{"6.weight": torch.zeros(64, 256)})
    put("wrong_shape", wrong, "has shape (64, 256)")
    nan = dict(state, **{"6.weight": torch.full((64, 512), math.nan)})
    put("nan", nan, "NaN or infinite")
    put(
        "missing_layer",
        {k: v for k, v in state.items() if not k.startswith("8.")},
        "not this architecture",
    )
    mnist = make_spec(input_shape=(1, 28, 28), num_classes=10)
    other = folder / "other_arch.pt"
    save_model(other, model=build_model(mnist, seed=0), spec=mnist)
    files["other_arch"] = (other, "architecture")
    put("safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ", "safetensors", ".safetensors")
    put("pickle_code", {"x": _Touch(folder / "pwned")}, "not a readable PyTorch model file")
    files["missing"] = (folder / "nowhere.pt", "no such file")
    return files


BAD = [
    "truncated",
    "text",
    "empty",
    "list",
    "forged_spec",
    "forged_state",
    "wrong_shape",
    "nan",
    "missing_layer",
    "other_arch",
    "safetensors",
    "pickle_code",
    "missing",
]


@pytest.fixture(scope="module")
def bad_files(run, tmp_path_factory):
    return _bad_files(run, tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", BAD)
def test_bad_suspects_exit_2_with_one_clear_line(run, bad_files, capsys, case):
    path, match = bad_files[case]
    code = main(["verify", "--run", str(run.root), str(path)])
    assert_clean_error(code, capsys, command="verify", match=match)
    assert not (path.parent / "pwned").exists()


@pytest.mark.parametrize("case", ["truncated", "nan"])
def test_bad_suspects_exit_2_in_a_real_process(run, bad_files, case):
    path, match = bad_files[case]
    result = subprocess.run(
        [sys.executable, "-m", "securemark_mpc.cli", "verify", "--run", str(run.root), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and match in result.stderr


def test_verify_without_a_key_exits_2(tmp_path, run, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.pt").write_bytes(run.model_path.read_bytes())
    code = main(["verify", "--run", str(bare), str(run.copy_path("alice"))])
    assert_clean_error(code, capsys, command="verify", match="no fingerprint key")


def test_demo_tells_the_story_end_to_end(tmp_path, monkeypatch, capsys):
    def plaintext_train(run: RunFolder, config: TrainConfig) -> int:
        write_plaintext_run(run, config)  # stands in for the two-minute MPC training
        return 0

    monkeypatch.setattr(demo, "train", plaintext_train)
    out_dir = tmp_path / "demo"
    assert main(["demo", "--out", str(out_dir), "--leaker", "carol"]) == 0
    out = capsys.readouterr().out
    assert "who leaked it: carol (correct" in out
    assert out.count("test accuracy") == len(demo.CUSTOMERS)
    assert (out_dir / "leaked.pt").is_file()
    code = main(["demo", "--out", str(out_dir)])
    assert_clean_error(code, capsys, command="demo", match="already holds a run")


# Attack chains and function-preserving transformations ------------------------------


def test_an_obfuscated_copy_made_by_the_attack_command_is_traced(run, tmp_path, capsys):
    out = tmp_path / "obfuscated.pt"
    chain = "permute:1,rescale:3,dummy:1"
    args = ["attack", "--chain", chain, "--run", str(run.root), "--out", str(out)]
    assert main([*args, "--model", str(run.copy_path("alice"))]) == 0
    assert chain in capsys.readouterr().out
    code, verdict = verify_json(run, out, capsys)
    assert code == 0 and verdict["accused"] == ["alice"]
    layers = verdict["alignment"]["layers"]
    assert verdict["alignment"]["changed"]
    assert all(layer["suspect_units"] == 2 * layer["units"] for layer in layers)
    assert all(layer["folded"] + layer["dropped"] == layer["units"] for layer in layers)
    assert sum(layer["permuted"] for layer in layers) > 0


def test_a_rescaled_copy_reports_the_carrier_units_it_rescaled(run, tmp_path, capsys):
    out = tmp_path / "rescaled.pt"
    args = ["attack", "rescale:2", "--run", str(run.root), "--out", str(out)]
    assert main([*args, "--model", str(run.copy_path("bob"))]) == 0
    capsys.readouterr()
    code, verdict = verify_json(run, out, capsys)
    assert code == 0 and verdict["accused"] == ["bob"]
    carrier = verdict["alignment"]["layers"][-1]  # the head's hidden units, in front of the output
    # a log-uniform factor in [e^-2, e^2] leaves about 2.5% of units within 5% of 1
    assert carrier["rescaled"] >= 0.9 * carrier["units"] and carrier["permuted"] == 0


@pytest.mark.parametrize(
    "chain",
    ["", "prune:0.5,,quantize:4", "prune:lots", "melt:1", "prune:0.5,collude-average"],
)
def test_bad_chain_strings_exit_2(run, tmp_path, capsys, chain):
    code = main(
        [
            "attack",
            "--chain",
            chain,
            "--run",
            str(run.root),
            "--model",
            str(run.copy_path("alice")),
            "--out",
            str(tmp_path / "x.pt"),
        ]
    )
    assert_clean_error(code, capsys, command="attack", match="")
    assert not (tmp_path / "x.pt").exists()


def test_an_attack_and_a_chain_together_exit_2(run, tmp_path, capsys):
    args = ["attack", "prune:0.5", "--chain", "quantize:4", "--run", str(run.root)]
    code = main([*args, "--model", str(run.copy_path("alice")), "--out", str(tmp_path / "x.pt")])
    assert_clean_error(code, capsys, command="attack", match="either")
