"""The trainer speaks plainly (issue 19, items 5 and 6): one line for a data-source error and for
Ctrl-C (with the checkpoint and the --resume command), --data-dir that nothing reads refused, an
--out holding a run refused unless --resume or --overwrite, config.json in every run folder,
--help with the recipe's real defaults, the number of models said at the start, and a full disk
while saving a checkpoint: one message, the previous checkpoint intact, --resume continues.
Tiny in-process runs (synthetic data, 16 x 16 images, a ResNet-8, 32 images, batch 16)."""
import errno
import json
import os

import pytest

import attnfast
from attnfast import train
from attnfast.train import checkpoints, cli, loop, recipes

TINY = ["--data", "synthetic", "--train-size", "32", "--test-size", "16", "--image-size", "16",
        "--model", "resnet8", "--batch-size", "16", "--pictures", "0", "--no-progress",
        "--seeds", "1", "--method", "baseline", "--epochs", "2"]


@pytest.fixture(autouse=True)
def torch_backend():
    with attnfast.use_backend("torch"):
        yield


def main(out, *extra):
    return train.main([*TINY, "--out", str(out), *extra])


def interrupted_main(argv):
    """train.main(argv), a Ctrl-C escaping it turned into a test failure (a KeyboardInterrupt
    would stop the whole pytest session)."""
    try:
        return train.main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the trainer as a traceback")


def test_data_source_error_is_one_line(tmp_path, capsys):
    assert train.main(["--data", "cifar10", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data source cifar10: cifar10 needs --data-dir")
    assert "\n" not in err and "Traceback" not in err


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path, capsys, monkeypatch):
    real, calls = loop.train_epoch, []

    def second_epoch_interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(loop, "train_epoch", second_epoch_interrupted)
    assert interrupted_main([*TINY, "--out", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err.strip()
    ckpt = tmp_path / "run" / "baseline" / "checkpoint.pt"
    assert err == (f"interrupted: the last checkpoint is {ckpt} (written at the end of the last "
                   "finished epoch); continue with: python -m attnfast.train "
                   + " ".join([*TINY, "--out", str(tmp_path / "run"), "--resume"]))
    monkeypatch.setattr(loop, "train_epoch", real)
    assert main(tmp_path / "run", "--resume") == 0
    assert [r["epoch"] for r in checkpoints.load(ckpt)["history"]] == [1, 2]


@pytest.mark.parametrize("argv,ok", [
    (["--data-dir", "/data/x"], False),                           # located-digits: in memory
    (["--data", "synthetic", "--data-dir", "/data/x"], False),
    (["--recipe", "cifar100-resnet110", "--data-dir", "/data/x"], True),
    (["--data", "cifar10", "--data-dir", "/data/x"], True),
])
def test_data_dir_that_nothing_reads_is_refused(argv, ok):
    args = recipes.parse_args(argv)
    if ok:
        assert recipes.configure(args)["data_dir"] == "/data/x"
        return
    with pytest.raises(SystemExit, match="--data-dir /data/x is not read by .* which is built "
                                         "in memory; the sources read from a folder are "
                                         "cifar10, cifar100"):
        recipes.configure(args)


def test_bilinear_guidance_needs_the_energy():
    args = recipes.parse_args(["--method", "guidance", "--guidance-upsample", "bilinear",
                               "--guidance-loss", "l1"])
    with pytest.raises(SystemExit, match="--guidance-upsample bilinear is defined for "
                                         "--guidance-loss energy only, got l1"):
        recipes.configure(args)
    args = recipes.parse_args(["--method", "guidance", "--guidance-upsample", "bilinear"])
    assert recipes.configure(args)["guidance_upsample"] == "bilinear"


def test_out_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert main(out, "--epochs", "1") == 0
    first = (out / "baseline" / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit, match=f"--out {out} already holds a run "
                                         f"\\({out / 'baseline'}/checkpoint.pt\\); add --resume"):
        main(out, "--epochs", "1")
    assert (out / "baseline" / "checkpoint.pt").read_bytes() == first
    with pytest.raises(SystemExit, match="give one"):
        main(out, "--resume", "--overwrite")
    assert main(out, "--epochs", "1", "--overwrite", "--seed", "3") == 0
    assert (out / "baseline" / "checkpoint.pt").read_bytes() != first
    assert main(out, "--epochs", "1", "--resume", "--seed", "3") == 0


def test_config_json_in_every_run_folder(tmp_path):
    out = tmp_path / "run"
    assert train.main([*TINY, "--out", str(out), "--seeds", "2", "--epochs", "1",
                       "--lr", "0.03"]) == 0
    for seed in (0, 1):
        cfg = json.loads((out / f"seed{seed}" / "baseline" / "config.json").read_text())
        assert (cfg["seed"], cfg["method"], cfg["lr"], cfg["epochs"], cfg["data"]) == (
            seed, "baseline", 0.03, 1, "synthetic")
        assert cfg["momentum"] == 0.9 and cfg["recipe"] == "located-digits"


def test_help_shows_the_recipes_real_defaults(capsys):
    with pytest.raises(SystemExit):
        recipes.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split()).split(" options: ", 1)[1]
    assert "default: None" not in text
    for option, value in (("--epochs EPOCHS", 8), ("--lr LR", 0.05), ("--seeds SEEDS", 3),
                          ("--batch-size BATCH_SIZE", 64), ("--data", "located-digits")):
        assert option in text and f"(default: {value})" in text.split(option, 1)[1][:600]
    assert text.count("(default: cosine)") == 1
    for chunk in text.split(" --")[1:]:                 # no option states its default twice
        assert chunk.count("default") <= 1, chunk


def test_the_number_of_models_is_said_at_the_start(tmp_path, capsys, monkeypatch):
    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "run", stop)
    assert interrupted_main(["--epochs", "1", "--out", str(tmp_path), "--train-size", "16",
                             "--test-size", "8", "--no-progress"]) == 130
    assert ("training 9 model(s): 3 seed(s) x 3 method(s) (baseline, sharpen-focus, guidance), "
            "1 epoch(s) each") in capsys.readouterr().out


def _fail_writes_of(name, after, monkeypatch):
    """Make the ``after``+1-th fsync of a temp file of ``name`` fail with ENOSPC."""
    real, seen = os.fsync, []

    def fsync(fd):
        if f".{name}.tmp" in os.readlink(f"/proc/self/fd/{fd}"):
            seen.append(fd)
            if len(seen) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    monkeypatch.setattr(checkpoints.os, "fsync", fsync)


class FullDisk:
    """A file object whose writes fail with ENOSPC after ``room`` bytes."""

    def __init__(self, path, mode, room=2000):
        self.f, self.room = open(path, mode), room

    def write(self, data):
        self.room -= len(data)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("where", ["fsync", "torch.save"])
def test_full_disk_keeps_the_last_checkpoint_and_resume_continues(tmp_path, monkeypatch, where):
    out = tmp_path / "run"
    ckpt = out / "baseline" / "checkpoint.pt"
    real_save, saves = checkpoints.save, []

    def save(*a, **k):   # the first checkpoint is written; the second finds the disk full
        saves.append(1)
        if len(saves) == 2:
            if where == "fsync":
                _fail_writes_of("checkpoint.pt", 0, monkeypatch)
            else:
                monkeypatch.setattr(checkpoints, "open", FullDisk, raising=False)
            kept.append(ckpt.read_bytes())
        return real_save(*a, **k)
    kept = []
    monkeypatch.setattr(checkpoints, "save", save)
    with pytest.raises(SystemExit) as e:
        main(out)
    assert str(e.value) == (f"cannot write {ckpt}: No space left on device (ENOSPC); {ckpt} is "
                            "left as it was. Free space (or use another --out), then run again "
                            "with --resume")
    assert ckpt.read_bytes() == kept[0] and checkpoints.load(ckpt)["epoch"] == 1
    assert not [p for p in ckpt.parent.iterdir() if ".tmp" in p.name]
    monkeypatch.undo()
    with attnfast.use_backend("torch"):
        assert main(out, "--resume") == 0
    assert checkpoints.load(ckpt)["epoch"] == 2


def test_a_write_error_that_is_not_the_systems_still_raises(tmp_path):
    """Only OSErrors (in the chain) become the one-line message; a bug stays a traceback."""
    def broken(f):
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        checkpoints.atomic_write(tmp_path / "x.pt", broken)
    assert list(tmp_path.iterdir()) == []
