"""Checkpoints refuse damaged, edited and foreign files with one line, and load intact ones."""

from __future__ import annotations

import pytest
import torch

from brainnet.checkpoint import FORMAT, CheckpointError, digest, load_checkpoint, save_checkpoint


def state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"step": 7, "scenario": "name: x\n", "model": {"w": torch.randn(64, 64, generator=g),
            "b": torch.zeros(64, dtype=torch.bfloat16)}, "rng": torch.get_rng_state()}  # fmt: skip


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("checkpoint ")
    return msg


def test_round_trip_keeps_every_value_and_records_versions(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state())
    got = load_checkpoint(tmp_path)  # a run directory works too
    assert got["format"] == FORMAT and got["step"] == 7 and "torch" in got["versions"]
    torch.testing.assert_close(got["model"]["w"], state()["model"]["w"], rtol=0, atol=0)
    assert "digest" not in got  # checked and removed


def test_truncated_files_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state())
    data = path.read_bytes()
    for keep in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:keep])
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert "not a readable checkpoint" in one_line(e)


def test_flipped_bits_and_edited_tensors_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state())
    data = bytearray(path.read_bytes())
    refused = 0
    for pos in range(0, len(data), len(data) // 40):  # 40 places across the file
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        path.write_bytes(bytes(flipped))
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            assert "\n" not in str(e)
            refused += 1
    # a flip in a zip name or padding byte can be harmless to the content; most must be caught
    assert refused >= 30
    # the tensor data itself: edited and saved again without a new digest
    path.write_bytes(bytes(data))
    body = torch.load(path, weights_only=True)
    body["model"]["w"][3, 5] += 1.0
    torch.save(body, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "digest does not match" in one_line(e)


def test_other_formats_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    future = {**state(), "format": 99, "versions": {"brainnet": "9.9"}}
    torch.save(future, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "format = 99 (written by brainnet 9.9)" in one_line(e) and "allowed: format 1, 2" in str(
        e.value
    )
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="format = None"):
        load_checkpoint(path)
    torch.save({**state(), "format": 1}, path)  # written before digests: still loads
    assert load_checkpoint(path)["step"] == 7


def test_digest_sees_dtype_shape_and_order_of_content():
    a = {"x": torch.zeros(4), "y": [1, 2]}
    assert digest(a) == digest({"y": [1, 2], "x": torch.zeros(4)})  # key order does not matter
    assert digest(a) != digest({"x": torch.zeros(2, 2), "y": [1, 2]})
    assert digest(a) != digest({"x": torch.zeros(4, dtype=torch.float64), "y": [1, 2]})
    assert digest(a) != digest({"x": torch.zeros(4), "y": [2, 1]})
