"""Black-box tracing: the keyed query set, behavioural marks, answers files and served models."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from securemark_mpc.blackbox.key import BehaviourConfig
from securemark_mpc.blackbox.protocol import serving
from securemark_mpc.blackbox.queries import answers
from securemark_mpc.blackbox.store import key_path, load_blackbox, queries_path
from securemark_mpc.blackbox.tilt import (
    answer_values,
    boundary_metric,
    gap_operator,
    make_tilt,
    read_positions,
    signs,
    weight_change,
)
from securemark_mpc.cli import main
from securemark_mpc.config import TrainConfig
from securemark_mpc.models import load_model
from securemark_mpc.plaintext import write_plaintext_run
from securemark_mpc.run_folder import RunFolder

ISSUED = ("alice", "bob", "carol")
SERVER_START_SECONDS = 120

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunFolder:
    """A plaintext-trained run with copies (weight and behavioural marks) for three customers."""
    folder = RunFolder(tmp_path_factory.mktemp("blackbox") / "run")
    write_plaintext_run(folder, TrainConfig())
    for name in ISSUED:
        assert (
            main(["issue", "--run", str(folder.root), "--customer", name, "--key-seed", "3"]) == 0
        )
    return folder


@pytest.fixture(scope="module")
def query_images(run) -> torch.Tensor:
    return load_blackbox(run)[1].images


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> torch.nn.Module:
    """A model of the same architecture trained independently (another seed, fewer epochs)."""
    folder = RunFolder(tmp_path_factory.mktemp("stranger") / "run")
    return write_plaintext_run(folder, TrainConfig(seed=5, epochs=3)).model


def write_answers(path: Path, labels) -> Path:
    path.write_text(json.dumps({"labels": labels}))
    return path


def verify(run: RunFolder, capsys, *options: str) -> tuple[int, dict]:
    code = main(["verify", "--run", str(run.root), *options, "--json"])
    return code, json.loads(capsys.readouterr().out)


def assert_clean_error(code: int, capsys, *, match: str) -> None:
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("securemark verify: error:"), lines
    assert match in lines[0]


def test_queries_file_holds_only_images(run, tmp_path, query_images, capsys):
    out = tmp_path / "q.npz"
    assert main(["queries", "--run", str(run.root), "--out", str(out)]) == 0
    assert "keyed queries" in capsys.readouterr().out
    with np.load(out, allow_pickle=False) as archive:
        assert archive.files == ["images"]
        images = archive["images"]
    key, _ = load_blackbox(run)
    assert images.dtype == np.float32
    assert images.shape == (key.queries, 1, 8, 8)
    assert np.array_equal(images, query_images.numpy())
    # the key and the run's own copy of the queries stay owner-only
    for path in (key_path(run), queries_path(run)):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("name", ISSUED)
def test_answers_trace_the_leaker(run, query_images, tmp_path, capsys, name):
    copy, _ = load_model(run.copy_path(name))
    labels = answers(copy, query_images).tolist()
    code, verdict = verify(
        run, capsys, "--answers", str(write_answers(tmp_path / "a.json", labels))
    )
    assert code == 0
    assert verdict["ours"] is True and verdict["accused"] == [name]
    assert set(verdict["scores"]) == set(ISSUED)
    assert verdict["accusations"][0]["p_value"] <= verdict["epsilon"]


def test_copies_still_carry_the_weight_mark(run, capsys):
    code = main(["verify", "--run", str(run.root), str(run.copy_path("bob")), "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["accused"] == ["bob"]


def test_an_independent_model_accuses_nobody(run, stranger, query_images, tmp_path, capsys):
    labels = answers(stranger, query_images).tolist()
    code, verdict = verify(
        run, capsys, "--answers", str(write_answers(tmp_path / "s.json", labels))
    )
    assert code == 1 and verdict["accused"] == []


def test_the_unmarked_model_accuses_nobody(run, query_images, tmp_path, capsys):
    model, _ = load_model(run.model_path)
    labels = answers(model, query_images).tolist()
    code, verdict = verify(
        run, capsys, "--answers", str(write_answers(tmp_path / "u.json", labels))
    )
    assert code == 1 and verdict["accused"] == []


def _bad_answers(count: int) -> dict[str, tuple[str, str]]:
    """name -> (file text, words expected in the error)."""
    good = [0] * count
    return {
        "not_json": ("{labels: [1, 2", "not a readable JSON file"),
        "a_list": (json.dumps(good), 'expected a JSON object {"labels": [...]}'),
        "no_labels": (json.dumps({"answers": good}), 'expected a JSON object {"labels": [...]}'),
        "labels_not_list": (json.dumps({"labels": "0123"}), '"labels" must be a list'),
        "too_short": (json.dumps({"labels": good[:-1]}), f"{count - 1} labels"),
        "too_long": (json.dumps({"labels": good + [0]}), f"{count + 1} labels"),
        "float": (json.dumps({"labels": [0.5] + good[1:]}), "not an integer class label"),
        "integral_float": (json.dumps({"labels": [1.0] + good[1:]}), "not an integer class label"),
        "bool": (json.dumps({"labels": [True] + good[1:]}), "not an integer class label"),
        "string": (json.dumps({"labels": ["3"] + good[1:]}), "not an integer class label"),
        "negative": (json.dumps({"labels": [-1] + good[1:]}), "outside the 10 classes"),
        "too_large": (json.dumps({"labels": good[:-1] + [10]}), "outside the 10 classes"),
    }


@pytest.mark.parametrize("case", list(_bad_answers(1)))
def test_bad_answers_exit_2_with_one_clear_line(run, tmp_path, capsys, case):
    text, match = _bad_answers(load_blackbox(run)[0].queries)[case]
    path = tmp_path / "bad.json"
    path.write_text(text)
    assert_clean_error(
        main(["verify", "--run", str(run.root), "--answers", str(path)]), capsys, match=match
    )


def test_missing_answers_file_and_mixed_options_exit_2(run, tmp_path, capsys):
    code = main(["verify", "--run", str(run.root), "--answers", str(tmp_path / "none.json")])
    assert_clean_error(code, capsys, match="no such file")
    answers_file = write_answers(tmp_path / "a.json", [0])
    code = main(
        [
            "verify",
            "--run",
            str(run.root),
            str(run.copy_path("bob")),
            "--answers",
            str(answers_file),
        ]
    )
    assert_clean_error(code, capsys, match="not both")
    assert_clean_error(main(["verify", "--run", str(run.root)]), capsys, match="--answers FILE")


def test_endpoint_of_a_served_copy_traces_the_leaker(run, capsys):
    copy, spec = load_model(run.copy_path("carol"))
    with serving(model=copy, spec=spec) as server:
        code, verdict = verify(run, capsys, "--endpoint", server.url)
    assert code == 0 and verdict["accused"] == ["carol"] and verdict["suspect"] == server.url


def test_endpoint_of_an_independent_model_accuses_nobody(run, stranger, capsys):
    _, spec = load_model(run.model_path)
    with serving(model=stranger, spec=spec) as server:
        code, verdict = verify(run, capsys, "--endpoint", server.url)
    assert code == 1 and verdict["accused"] == []


def test_server_speaks_the_documented_protocol(run, query_images):
    copy, spec = load_model(run.copy_path("alice"))
    with serving(model=copy, spec=spec) as server:
        with urllib.request.urlopen(server.url, timeout=30) as response:
            assert json.loads(response.read()) == {
                "input_shape": [1, 8, 8],
                "num_classes": 10,
                "max_batch": 256,
            }
        body = json.dumps({"images": query_images[:5].tolist()}).encode()
        with urllib.request.urlopen(server.url, data=body, timeout=30) as response:
            assert json.loads(response.read())["labels"] == answers(copy, query_images[:5]).tolist()
        for bad in (b"{}", b"[1]", b'{"images": [[1, 2]]}', b"not json"):
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(server.url, data=bad, timeout=30)
            assert error.value.code == 400 and "error" in json.loads(error.value.read())


def test_unreachable_or_lying_endpoints_exit_2(run, capsys):
    _, spec = load_model(run.model_path)
    with serving(model=torch.nn.Identity(), spec=spec) as server:  # answers are not labels
        url = server.url
        assert_clean_error(
            main(["verify", "--run", str(run.root), "--endpoint", url]), capsys, match=url
        )
    # the server is gone: connection refused
    code = main(["verify", "--run", str(run.root), "--endpoint", url])
    assert_clean_error(code, capsys, match="could not query the endpoint")
    code = main(["verify", "--run", str(run.root), "--endpoint", "ftp://example.org/x"])
    assert_clean_error(code, capsys, match="not an http(s) URL")


def test_serve_command_in_a_real_process(run, capsys):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "securemark_mpc.cli",
            "serve",
            "--run",
            str(run.root),
            str(run.copy_path("bob")),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # the process prints its URL once it listens
        assert "serving" in line, process.stderr.read() if process.poll() is not None else line
        url = line.split(" at ")[1].split()[0]
        code, verdict = verify(run, capsys, "--endpoint", url)
        assert code == 0 and verdict["accused"] == ["bob"]
    finally:
        process.terminate()
        process.wait(timeout=SERVER_START_SECONDS)


def third_labels(first: torch.Tensor, second: torch.Tensor) -> np.ndarray:
    """Per query, a label that is neither of its two."""
    return np.array([min({0, 1, 2} - {int(a), int(b)}) for a, b in zip(first, second, strict=True)])


def random_queries(
    rng: np.random.Generator, *, queries: int, width: int, classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output-layer inputs of synthetic queries and their two distinct classes each."""
    inputs = torch.from_numpy(np.abs(rng.standard_normal((queries, width))))
    first = torch.from_numpy(rng.integers(0, classes, queries))
    second = (first + torch.from_numpy(rng.integers(1, classes, queries))) % classes
    return inputs, first, second


def unit_gap_tilt(inputs, first, second, *, classes, positions, metric=None):
    """The tilt these tests read: gap 1, key seed 7."""
    return make_tilt(
        inputs=inputs,
        first=first,
        second=second,
        classes=classes,
        positions=positions,
        gap=1.0,
        seed=7,
        metric=metric,
    )


def test_the_tilt_reads_back_its_signs_from_top1_answers_alone():
    """Answers at zero-gap queries, tilted by Δ = Σ s_k A_k, spell s back by least squares."""
    rng = np.random.default_rng(0)
    queries, width, classes, positions = 400, 24, 5, 16
    inputs, first, second = random_queries(rng, queries=queries, width=width, classes=classes)
    tilt = unit_gap_tilt(inputs, first, second, classes=classes, positions=positions)
    codeword = rng.integers(0, 2, positions)
    gaps = (
        gap_operator(inputs, first, second, classes)
        @ weight_change(tilt, codeword).double().flatten()
    )
    assert np.allclose(gaps.numpy(), tilt.design @ signs(codeword), atol=1e-4)
    labels = np.where(gaps.numpy() > 0, first.numpy(), second.numpy())
    labels[:100] = third_labels(first[:100], second[:100])  # refused or filtered: erased
    values = answer_values(labels, first.numpy(), second.numpy())
    assert not values[:100].any() and values[100:].all()
    assert np.array_equal(read_positions(tilt, values) > 0, codeword == 1)
    assert not read_positions(tilt, np.zeros(queries)).any()  # nothing answered, nothing read


def test_a_boundary_metric_keeps_the_tilt_off_the_data():
    """Data that use 10 of 16 inputs: the tilt still puts its gaps on the queries, but
    made smallest in the data's boundary metric it barely moves the data's logits."""
    rng = np.random.default_rng(1)
    classes, width, positions, queries = 4, 16, 8, 200
    data = torch.from_numpy(np.abs(rng.standard_normal((300, width))) * (np.arange(width) < 10))
    labels = torch.from_numpy(rng.integers(0, classes, 300))
    logits = torch.from_numpy(rng.standard_normal((300, classes)))
    inputs, first, second = random_queries(rng, queries=queries, width=width, classes=classes)
    codeword = rng.integers(0, 2, positions)
    metric = boundary_metric(data, logits, labels, temperature=1.0, ridge=1e-3)
    moved = {}
    for name, chosen in (("plain", None), ("boundary", metric)):
        tilt = unit_gap_tilt(
            inputs, first, second, classes=classes, positions=positions, metric=chosen
        )
        delta = weight_change(tilt, codeword).double()
        gaps = gap_operator(inputs, first, second, classes) @ delta.flatten()
        assert np.allclose(gaps.numpy(), tilt.design @ signs(codeword), atol=1e-4)
        assert np.isclose(np.sqrt((tilt.design**2).sum(1).mean()), 1.0)  # the same query gap
        moved[name] = float((data @ delta.T).norm())
    assert moved["boundary"] < 0.1 * moved["plain"]


def test_more_positions_than_queries_is_refused():
    with pytest.raises(ValueError, match="positions"):
        BehaviourConfig(queries=100, positions=101)


def test_two_colluders_answering_at_random_are_traced(run, query_images, tmp_path, capsys):
    """Each query answered by a random one of two copies: a colluder is accused, nobody else."""
    first, second = (answers(load_model(run.copy_path(n))[0], query_images) for n in ISSUED[:2])
    pick = np.random.default_rng(1).integers(0, 2, len(first)).astype(bool)
    labels = np.where(pick, first, second).tolist()
    code, verdict = verify(
        run, capsys, "--answers", str(write_answers(tmp_path / "mix.json", labels))
    )
    assert code == 0 and verdict["accused"] and set(verdict["accused"]) <= set(ISSUED[:2])


def test_a_thief_refusing_a_third_of_the_queries_is_still_traced(
    run, query_images, tmp_path, capsys
):
    """Answers the thief replaces by a third label (refused, filtered) are erased, not misread."""
    _, queries = load_blackbox(run)
    labels = answers(load_model(run.copy_path("carol"))[0], query_images)
    refused = np.random.default_rng(2).random(len(labels)) < 1 / 3
    labels = np.where(refused, third_labels(queries.first, queries.second), labels).tolist()
    code, verdict = verify(
        run, capsys, "--answers", str(write_answers(tmp_path / "refused.json", labels))
    )
    assert code == 0 and verdict["accused"] == ["carol"]


def test_damaged_query_file_exits_2(run, tmp_path, capsys):
    damaged = RunFolder(tmp_path / "run")
    shutil.copytree(run.root, damaged.root)
    with np.load(queries_path(damaged), allow_pickle=False) as archive:
        arrays = dict(archive)
    arrays["design"] = arrays["design"][:, :-1]
    np.savez(queries_path(damaged), **arrays)
    answers_file = write_answers(tmp_path / "a.json", [0] * len(arrays["images"]))
    code = main(["verify", "--run", str(damaged.root), "--answers", str(answers_file)])
    assert_clean_error(code, capsys, match="positions")
