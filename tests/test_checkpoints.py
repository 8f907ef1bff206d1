"""The trainer refuses bad state before it trains: damaged, empty or truncated checkpoints (named
in the message), a checkpoint of other settings on --resume (unless --resume-override, which then
applies the new settings and recomputes the schedule), an --out it cannot write; and it removes
the temp files a kill during a write leaves behind. Tiny in-process runs (synthetic data, 16 x 16
images, a ResNet-8, 32 training images, batch 16: 2 steps per epoch)."""
import json
import math
import shutil
import struct
import subprocess
import zipfile

import pytest
import torch

import attnfast
from attnfast import train
from attnfast.train import checkpoints, loop, recipes

TINY = ["--data", "synthetic", "--train-size", "32", "--test-size", "16", "--image-size", "16",
        "--model", "resnet8", "--batch-size", "16", "--pictures", "0", "--no-progress",
        "--seeds", "1", "--method", "baseline", "--epochs", "2", "--lr", "0.05",
        "--schedule", "cosine"]
STEPS = 2  # 32 images / batch 16


pytestmark = pytest.mark.usefixtures("torch_backend")  # conftest


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory):
    """A run of 2 epochs stopped after the first: its output folder (copy it before use)."""
    out = tmp_path_factory.mktemp("cut") / "run"
    with attnfast.use_backend("torch"):
        assert train.main([*TINY, "--out", str(out), "--stop-after", "1"]) == 0
    return out


@pytest.fixture
def out(cut_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(cut_run, dst)
    return dst


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if an epoch of training starts."""
    def refuse(*a, **k):
        raise AssertionError("training started")
    monkeypatch.setattr(loop, "train_epoch", refuse)


def main(out, *extra):
    return train.main([*TINY, "--out", str(out), *extra])


def tensor_record_offset(path):
    """(offset, size) of the bytes of the largest tensor record in the checkpoint's zip."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename),
                   key=lambda i: i.file_size)
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:
                                                  info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flip_64_bytes(path):
    start, size = tensor_record_offset(path)
    assert size >= 256
    raw = bytearray(path.read_bytes())
    for i in range(start + size // 2, start + size // 2 + 64):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


# ----------------------------------------------------------------------------- damaged files

def test_flipped_bytes_in_a_tensor_record_are_refused_naming_the_file(out, no_training):
    ckpt = out / "baseline" / "checkpoint.pt"
    flip_64_bytes(ckpt)
    before = ckpt.read_bytes()
    # torch.load alone takes the damaged tensor: the check has to be ours
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    with pytest.raises(SystemExit, match=f"checkpoint {ckpt} is damaged: record .* CRC-32"):
        main(out, "--resume")
    with pytest.raises(checkpoints.CheckpointError, match=str(ckpt)):
        checkpoints.load(ckpt)
    assert ckpt.read_bytes() == before  # left as it was, for the user to look at


@pytest.mark.parametrize("cut", ["empty", "half", "last-16-bytes"])
def test_empty_or_truncated_checkpoint_is_refused_naming_the_file(out, no_training, cut):
    ckpt = out / "baseline" / "checkpoint.pt"
    raw = ckpt.read_bytes()
    ckpt.write_bytes({"empty": b"", "half": raw[:len(raw) // 2],
                      "last-16-bytes": raw[:-16]}[cut])
    what = "is empty" if cut == "empty" else "is damaged or truncated"
    with pytest.raises(SystemExit, match=f"checkpoint {ckpt} {what}"):
        main(out, "--resume")


def test_a_sound_checkpoint_passes_the_check(out):
    ckpt = out / "baseline" / "checkpoint.pt"
    checkpoints.verify(ckpt)
    assert checkpoints.load(ckpt)["epoch"] == 1


# ----------------------------------------------------------------------------- unwritable --out

def test_unwritable_out_fails_before_training(tmp_path, no_training):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match=f"--out {blocker}/sub: cannot write into {blocker}/sub"):
        main(blocker / "sub")


# ----------------------------------------------------------------------------- settings on resume

@pytest.mark.parametrize("flag,value,key,saved", [
    ("--lr", "0.2", "lr", 0.05), ("--batch-size", "8", "batch_size", 16),
    ("--epochs", "3", "epochs", 2), ("--attention", "channel", "attention", "pixel"),
    ("--weight-decay", "0.001", "weight_decay", 5e-4), ("--seed", "1", "seed", 0)])
def test_resume_with_other_settings_is_refused_listing_them(out, no_training, flag, value, key,
                                                            saved):
    with pytest.raises(SystemExit) as e:
        main(out, "--resume", flag, value)
    msg = str(e.value)
    assert f"{out / 'baseline' / 'checkpoint.pt'} was written with other settings" in msg
    assert f"{flag} {saved!r} in the checkpoint" in msg and "--resume-override" in msg


def test_refusal_lists_every_differing_setting(out, no_training):
    with pytest.raises(SystemExit) as e:
        main(out, "--resume", "--lr", "0.2", "--epochs", "3")
    msg = str(e.value)
    assert "--lr 0.05 in the checkpoint, 0.2 now" in msg
    assert "--epochs 2 in the checkpoint, 3 now" in msg


def _cfg(*extra):
    return recipes.configure(recipes.parse_args([*TINY, *extra]))


@pytest.mark.parametrize("flag,value", [
    ("--lr", "0.1"), ("--batch-size", "8"), ("--epochs", "5"), ("--attention", "gradcam"),
    ("--momentum", "0.5"), ("--weight-decay", "0"), ("--schedule", "step"),
    ("--milestones", "1"), ("--warmup-epochs", "1"), ("--weight", "0.3"), ("--order", "first"),
    ("--mask", "raw"), ("--inner-weight", "2"), ("--last-weight", "2"),
    ("--consistency-weight", "2"), ("--ramp-epochs", "1"), ("--inner-layer", "layer1"),
    ("--last-layer", "layer2"), ("--head", "none"), ("--reduction", "4"),
    ("--ggam-target", "label"), ("--ggam-guide", "paper"), ("--per-sample-grads", None),
    ("--amp", "bf16"), ("--channels-last", None), ("--seed", "3"), ("--data-seed", "3"),
    ("--data", "digits"), ("--image-size", "32"), ("--train-size", "64"),
    ("--test-size", "8"), ("--shortcut", "B"), ("--eval-split", "val"),
    ("--recipe", "digits")])
def test_every_setting_that_changes_the_run_is_compared(flag, value):
    saved = checkpoints.plain_config(_cfg())
    now = _cfg(flag, *([value] if value is not None else []))
    key = flag[2:].replace("-", "_")
    assert key in checkpoints.differences(saved, now)


def test_settings_that_do_not_change_the_run_are_not_compared(tmp_path):
    saved = checkpoints.plain_config(_cfg())
    now = _cfg("--out", str(tmp_path), "--stop-after", "1", "--workers", "0", "--threads", "1",
               "--device", "cpu", "--pictures", "3", "--progress", "--eval-every", "2",
               "--compare", "--seeds", "2")
    assert checkpoints.differences(saved, now) == {}
    # old checkpoints kept no None values: missing equals None
    assert checkpoints.differences({k: v for k, v in saved.items() if v is not None},
                                   _cfg()) == {}


def test_resume_override_applies_the_new_settings_and_recomputes_the_schedule(out, capsys):
    """--lr 0.2 and --epochs 3 after 1 of 2 epochs at 0.05: epoch 2 runs at 0.2 times the
    cosine factor of 3 epochs after 1 (0.5 (1 + cos(pi / 3)) = 0.75), and the checkpoint then
    carries the new settings, so a plain --resume continues."""
    assert main(out, "--resume", "--resume-override", "--lr", "0.2", "--epochs", "3",
                "--stop-after", "1") == 0
    text = capsys.readouterr().out
    assert "--resume-override: epochs 2 -> 3, lr 0.05 -> 0.2" in text
    ck = torch.load(out / "baseline" / "checkpoint.pt", weights_only=True)
    rows = ck["history"]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[0]["lr"] == pytest.approx(0.05)
    assert rows[1]["lr"] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert ck["config"]["lr"] == 0.2 and ck["config"]["epochs"] == 3
    assert ck["scheduler"]["last_epoch"] == 2 * STEPS
    assert ck["scheduler"]["base_lrs"] == [0.2, 0.2]   # backbone and new (attnfast.train.optim)
    assert [g["initial_lr"] for g in ck["optimizer"]["param_groups"]] == [0.2, 0.2]
    assert main(out, "--resume", "--lr", "0.2", "--epochs", "3") == 0
    rows = torch.load(out / "baseline" / "checkpoint.pt", weights_only=True)["history"]
    assert rows[2]["lr"] == pytest.approx(0.2 * 0.5 * (1 + math.cos(2 * math.pi / 3)))


def test_resume_override_of_the_batch_size_places_the_schedule_by_epochs(out):
    """Batch 8 after an epoch at batch 16: 4 steps per epoch now, the schedule at step 4 of 8
    (cosine factor 0.5), the LR not rescaled because --lr is given in both."""
    assert main(out, "--resume", "--resume-override", "--batch-size", "8") == 0
    ck = torch.load(out / "baseline" / "checkpoint.pt", weights_only=True)
    assert ck["history"][1]["lr"] == pytest.approx(0.05 * 0.5)
    assert ck["scheduler"]["last_epoch"] == 8 and ck["config"]["batch_size"] == 8
    assert ck["history"][1]["train_images"] == 32


def test_resume_override_needs_resume():
    with pytest.raises(SystemExit, match="--resume-override goes with --resume"):
        recipes.configure(recipes.parse_args([*TINY, "--resume-override"]))


# ----------------------------------------------------------------------------- temp files

def _dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_temp_files_are_removed_on_the_next_start(out, capsys):
    run_dir = out / "baseline"
    dead = _dead_pid()
    stale = [run_dir / f".checkpoint.pt.tmp{dead}", run_dir / f".metrics.json.tmp{dead}"]
    kept = [run_dir / f".checkpoint.pt.tmp{1}",  # pid 1 is alive
            run_dir / ".checkpoint.pt.tmpx", run_dir / f"checkpoint.pt.tmp{dead}",
            run_dir / f"notes.tmp{dead}"]
    for p in stale + kept:
        p.write_bytes(b"partial")
    assert main(out, "--resume") == 0
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    text = capsys.readouterr().out
    assert all(f"removed {p}" in text for p in stale)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"][-1]["epoch"] == 2
