"""The benchmark's command line speaks plainly (issue 19, item 7): a --cases pattern that matches
nothing is refused with the list of names before anything is measured or written, --list shows
the names, measurements whose repeats disagree are flagged, and the output says where the
targets come from and what "% copy" means. Nothing is timed here (speed is never asserted)."""
import pytest

from attnfast.bench import cli, report


def test_cases_matching_nothing_are_refused_with_the_names(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "run", lambda *a, **k: pytest.fail("measured anyway"))
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as e:
        cli.main(["--device", "cpu", "--cases", "foo,train/*", "--out", str(out)])
    msg = str(e.value)
    assert msg.startswith("attnfast.bench: --cases foo matches no case")
    assert "--list" in msg and "train/r18_cifar" in msg and "sharpen_focus_loss/r18_224" in msg
    assert not out.exists()


@pytest.mark.parametrize("pattern", ["pixel_attention", "r18_224", "train/r18_cifar",
                                     "sharpen_focus_loss*/cifar_r110", "r50_224"])
def test_patterns_matching_a_case_op_or_network_are_accepted(pattern):
    cfg = cli.config_from_args(cli.parse_args(["--device", "cpu", "--cases", pattern]))
    assert cli.unmatched(cfg) == []


def test_list_prints_every_case_and_measures_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "run", lambda *a, **k: pytest.fail("measured anyway"))
    assert cli.main(["--device", "cpu", "--list", "--out", str(tmp_path / "r")]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines]
    assert "train/r18_cifar" in names and "pixel_attention/r18_224.inner" in names
    assert any("op pixel_attention, network r18_224" in line for line in lines)
    assert not (tmp_path / "r").exists()


def test_noisy_repeats_are_flagged():
    """IQR / median above 0.25 -> '!' (pinned rows: spreads 0.40, 0.25, 0.10)."""
    rows = report.flag_noisy([
        {"case": "a", "mode": "fwd", "provider": "cpu", "median_ms": 1.0, "q1_ms": 0.9,
         "q3_ms": 1.3},
        {"case": "b", "mode": "fwd", "provider": "cpu", "median_ms": 2.0, "q1_ms": 1.75,
         "q3_ms": 2.25},
        {"case": "c", "variant": "baseline", "median_ms": 10.0, "q1_ms": 9.5, "q3_ms": 10.5},
        {"case": "d", "mode": "fwd", "provider": "cpu", "error": "boom"},
    ])
    assert [r.get("noisy") for r in rows] == ["!", "", "", None]
    lines = report.noisy_lines({"kernels": rows[:2] + rows[3:], "training": rows[2:3]})
    assert lines == ["WARNING: 1 measurement(s) spread by more than 25% of their median over the "
                     "repeats (marked '!'); their ratios are unreliable: rerun on a quiet machine "
                     "or with more --repeats: a fwd cpu"]
    assert report.noisy_lines({"kernels": rows[1:2], "training": []}) == []
    table = report.format_table(rows[:2], report.KERNEL_COLUMNS, 3)
    assert table.splitlines()[0].endswith("noisy") and table.splitlines()[2].endswith("!")


def test_output_explains_targets_and_percent_copy():
    text = " ".join(report.LEGEND)
    assert "% copy: that as a percentage of a plain tensor copy" in text
    assert "listed under 'Targets' in benchmarks/README.md" in text
