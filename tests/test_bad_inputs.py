"""Bad input files and output directories at the command line (issue 15, "Reliability").

Each ends with one ``error:`` line that names what is wrong and what is expected, exit code 2,
no traceback, and nothing written over:

* corpus files (``corpus.path``): missing, a directory, empty, blank, binary (NUL bytes, also
  late in the file), not UTF-8 (also late), shorter than one block in the train or the val
  split; refused when the scenario is validated, so ``run`` writes nothing;
* an output directory (``--out``) that cannot be created (a path under a regular file, a
  regular file) or a disk that fills up (ENOSPC, simulated in-process) on the first file of the
  run directory or on its checkpoint;
* an existing run directory is byte-identical after failed commands aimed at it or beside it.

(Checkpoints: truncated, bit-flipped, other-version and non-brainnet files are refused in
tests/test_checkpoint.py.)
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner, Result

from brainnet.cli import app
from brainnet.metrics import RunWriter

runner = CliRunner()

#: a scenario that trains in about a second on a CPU (independent modules, tiny corpus)
TINY = """\
name: tiny
device: cpu
corpus: {kind: tasks, block_size: 16, train_sequences: 64, val_sequences: 16}
modules: [{type: transformer, count: 2, d_model: 16, n_layer: 1, n_head: 2, message_dim: 8}]
train: {steps: 1, batch_size: 2, eval_every: 1, eval_batches: 1, warmup_steps: 0}
log: {every: 1}
"""


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def one_error(r: Result) -> str:
    """The one error line of a failed command: exit 2, no traceback, nothing on stdout."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> SHA-256), directories as ``<dir>/``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel + "/" if p.is_dir() else rel] = (
            "" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        )
    return out


# --------------------------------------------------------------------------- corpus files


def _corpus_files() -> dict[str, tuple[bytes | None, str, dict[str, object]]]:
    """case -> (file content or None for no file, phrase of the line, other corpus fields)."""
    long_ok = b"to be or not to be\n" * 4000  # 76,000 bytes: past any 64 KiB sniffing
    late = len(long_ok)
    return {
        "missing": (None, "no such file", {}),
        "directory": (b"", "not a file", {}),  # the path is made a directory below
        "empty": (b"", "file is empty", {}),
        "blank": (b" \n\t\r\n  ", "file is empty", {}),
        "binary": (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10,
            "binary (a NUL byte at byte 8)",
            {},
        ),
        "NUL late": (long_ok + b"\x00tail\n", f"binary (a NUL byte at byte {late})", {}),
        "latin-1": ("café olé\n".encode("latin-1") * 20, "not UTF-8", {}),
        "bad byte late": (
            long_ok + b"\xff\n",
            f"not UTF-8 (invalid start byte at byte {late})",
            {},
        ),
        "UTF-16": ("hello world\n".encode("utf-16") * 20, "", {}),  # NUL bytes or not UTF-8
        "train split too short": (
            b"abcdefghij",
            "the train split has 9 characters",
            {"block_size": 16},
        ),
        "val split too short": (
            b"x" * 100,
            "the val split has 5 characters",
            {"block_size": 8, "val_fraction": 0.05},
        ),
    }


CORPUS_CASES = list(_corpus_files())


@pytest.mark.parametrize("case", CORPUS_CASES)
def test_bad_corpus_file_is_one_line_at_validation(tmp_path: Path, case: str) -> None:
    content, phrase, extra = _corpus_files()[case]
    text = tmp_path / f"corpus {case}.txt"  # a space in the path, shown quoted
    if case == "directory":
        text.mkdir()
    elif content is not None:
        text.write_bytes(content)
    corpus = {"kind": "text", "path": f"'{text}'", **extra}
    fields = ", ".join(f"{k}: {v}" for k, v in corpus.items())
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        f"name: corpus\ncorpus: {{{fields}}}\nmodules: [{{type: transformer, count: 1}}]\n"
    )
    line = one_error(invoke("validate", scenario))
    assert line.startswith(f"error: s.yaml: corpus.path = {str(text)!r}: "), line
    assert phrase in line and "allowed: " in line, line
    if "short" in case:
        assert f"at least block_size + 1 = {extra['block_size'] + 1}" in line, line
    else:
        assert "a UTF-8 text file" in line, line
    out = tmp_path / "runs"
    out.mkdir()
    assert one_error(invoke("run", scenario, "--steps", "1", "--out", out, "--quiet")) == line
    assert list(out.iterdir()) == []  # refused before anything is written


def as_text_corpus(path: Path) -> list[str]:
    return ["--set", "corpus.kind=text", "--set", f"corpus.path={path}"]


def test_bad_corpus_file_through_set(tmp_path: Path) -> None:
    text = tmp_path / "bin.dat"
    text.write_bytes(bytes(range(256)))
    line = one_error(invoke("validate", "brain", *as_text_corpus(text)))
    assert line.startswith(f"error: --set: corpus.path = {str(text)!r}: looks binary"), line


def test_a_text_that_starts_blank_is_a_corpus(tmp_path: Path) -> None:
    """Only a wholly blank file is empty: 70,000 blanks and then text are a corpus."""
    text = tmp_path / "late.txt"
    text.write_text(" " * 70_000 + "the text itself\n" * 200, encoding="utf-8")
    r = invoke("validate", "brain", *as_text_corpus(text))
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- output directory


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    f = tmp_path / "tiny.yaml"
    f.write_text(TINY)
    return f


@pytest.mark.parametrize(
    ("where", "reason"),
    [("a_file/runs", "Not a directory"), ("a_file", "File exists")],
    ids=["under a file", "a file"],
)
def test_out_that_cannot_be_a_directory(tmp_path: Path, tiny: Path, where: str, reason: str):
    # as root, permission bits stop nothing: a path under a regular file cannot be created
    (tmp_path / "a_file").write_text("keep me\n")
    out = tmp_path / where
    line = one_error(invoke("run", tiny, "--out", out, "--quiet", "--no-report"))
    assert str(out) in line and reason in line and "allowed: " in line, line
    assert (tmp_path / "a_file").read_text() == "keep me\n"


def _enospc(path: object = None) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None if path is None else str(path))


@pytest.fixture
def old_run(tmp_path: Path, tiny: Path) -> Path:
    """A finished run directory in tmp_path/runs (1 step of TINY)."""
    r = invoke("run", tiny, "--out", tmp_path / "runs", "--quiet", "--no-report")
    assert r.exit_code == 0, (r.output, r.exception)
    path = Path(r.stdout.strip())
    assert (path / "checkpoint.pt").is_file() and (path / "config.yaml").is_file()
    return path


@pytest.mark.parametrize("when", ["first file", "checkpoint"])
def test_full_disk_is_one_line(
    tmp_path: Path, tiny: Path, old_run: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    before = snapshot(tmp_path / "runs")
    if when == "first file":

        def write_text(self: RunWriter, name: str, text: str) -> None:
            raise _enospc(self.path / name)

        monkeypatch.setattr(RunWriter, "write_text", write_text)
    else:

        def save(obj: object, f: object, *args: object, **kwargs: object) -> None:
            raise _enospc(getattr(f, "name", None))

        monkeypatch.setattr(torch, "save", save)
    line = one_error(invoke("run", tiny, "--out", tmp_path / "runs", "--quiet", "--no-report"))
    assert "No space left on device" in line and str(tmp_path / "runs") in line, line
    after = snapshot(tmp_path / "runs")
    assert {k: v for k, v in after.items() if k.split("/")[0] == old_run.name} == before


# --------------------------------------------------------------------------- nothing written over


def test_failed_commands_leave_a_run_directory_as_it_was(old_run: Path) -> None:
    parent = old_run.parent
    before = snapshot(parent)
    cfg = old_run / "config.yaml"
    failing = [
        ("run", "quickstart", "--set", "train.lr=-1", "--out", parent),
        ("run", cfg, "--steps", "1", "--set", "train.lrr=1", "--out", parent),
        ("run", cfg, "--steps", "0", "--out", parent),
        ("run", cfg, "--set", "device=gpu", "--out", parent),
        ("run", old_run, "--steps", "1", "--out", parent),  # a run directory is not a scenario
        ("validate", cfg, "--set", "modules.0.count=0"),
        ("validate", cfg, "--set", "modules.5.count=1"),
    ]
    for args in failing:
        line = one_error(invoke(*args, "--quiet") if args[0] == "run" else invoke(*args))
        assert line.startswith("error: "), (args, line)
        assert snapshot(parent) == before, args


def _copy(run: Path, to: Path, damage: str) -> Path:
    """A copy of ``run`` whose checkpoint is truncated, bit-flipped or of another format."""
    shutil.copytree(run, to)
    ckpt = to / "checkpoint.pt"
    data = bytearray(ckpt.read_bytes())
    if damage == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "bit flipped":
        data[len(data) // 2] ^= 0x10
        ckpt.write_bytes(data)
    else:  # written by another brainnet format
        state = torch.load(ckpt, weights_only=True)
        torch.save({**state, "format": 99, "versions": {"brainnet": "9.9"}}, ckpt)
    return to


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--set", "train.lr=-1"], "--set not allowed"),
        (["--out", "elsewhere"], "--out not allowed"),
        (["--steps", "0"], "allowed: a total of at least 1 steps"),
    ],
    ids=["--set", "--out", "fewer steps"],
)
def test_a_refused_resume_leaves_the_run_directory_as_it_was(
    old_run: Path, args: list[str], phrase: str
) -> None:
    before = snapshot(old_run.parent)
    line = one_error(invoke("run", "--resume", old_run, *args, "--quiet", "--no-report"))
    assert phrase in line, line
    assert snapshot(old_run.parent) == before


@pytest.mark.parametrize("damage", ["truncated", "bit flipped", "another format"])
def test_resume_from_a_damaged_checkpoint_is_refused(
    tmp_path: Path, old_run: Path, damage: str
) -> None:
    run = _copy(old_run, tmp_path / "copy", damage)
    before = snapshot(run)
    line = one_error(invoke("run", "--resume", run, "--quiet", "--no-report"))
    assert str(run / "checkpoint.pt") in line and "allowed: " in line, line
    phrase = {"truncated": "not a readable checkpoint", "bit flipped": "digest does not match",
              "another format": "format = 99 (written by brainnet 9.9)"}[damage]  # fmt: skip
    assert phrase in line, line
    assert snapshot(run) == before
