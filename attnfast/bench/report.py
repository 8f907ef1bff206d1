"""What a run reports: aligned or Markdown tables, the targets with PASS/MISS, the environment
(device, versions, commit), the plot, and the JSON / Markdown / PNG files."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .cases import Config
from .providers import device_backends


KERNEL_COLUMNS = (("case", "case", "{}"), ("mode", "mode", "{}"), ("provider", "provider", "{}"),
                  ("median ms", "median_ms", "{:.3f}"), ("IQR ms", "iqr_ms", "{:.3f}"),
                  ("x eager", "vs_eager", "{:.2f}"), ("x compile", "vs_compile", "{:.2f}"),
                  ("GB/s", "gbps", "{:.1f}"), ("% copy", "pct_copy", "{:.0f}"),
                  ("peak extra MB", "peak_extra_mb", "{:.1f}"), ("noisy", "noisy", "{}"))
TRAIN_COLUMNS = (("case", "case", "{}"), ("variant", "variant", "{}"), ("ops", "ops", "{}"),
                 ("N", "batch", "{}"),
                 ("step ms", "median_ms", "{:.1f}"), ("IQR ms", "iqr_ms", "{:.1f}"),
                 ("time x baseline", "time_x_baseline", "{:.2f}"),
                 ("peak MB", "peak_mb", "{:.0f}"), ("mem x baseline", "mem_x_baseline", "{:.2f}"),
                 ("x faster than hooks", "speedup_vs_hooks", "{:.2f}"), ("noisy", "noisy", "{}"))
# A measurement whose repeats spread by more than this (IQR / median) is flagged as noisy: its
# ratios are not to be trusted (on a busy machine the same case read 0.52x, 2.86x and 2.29x).
NOISY = 0.25
LEGEND = (
    "What the columns mean: median / IQR: of the timed repeats; x eager, x compile, "
    "time x baseline: time ratios between providers (or variants) timed in turns in this run "
    "(> 1 in 'x eager': faster than eager); GB/s: the least bytes the call must move over its "
    "median time; % copy: that as a percentage of a plain tensor copy (y.copy_(x), measured in "
    "this run): how near the memory-bandwidth limit the kernel runs; noisy '!': repeats spread "
    f"by more than {NOISY:.0%} of the median.",
    "The targets (PASS/MISS) are the project's performance goals, listed under 'Targets' in "
    "benchmarks/README.md: C++ CPU fused loss >= 2x eager forward+backward; Sharpen Focus "
    "first-order step <= 1.10x the baseline step and >= 2.2x faster than the hooks approach; "
    "second order <= 1.5x; first-order peak memory <= 1.10x.")


def flag_noisy(rows) -> list:
    """Set ``row["noisy"]`` ("!" or "") on every timed row: whether its repeats spread (q3 - q1)
    by more than :data:`NOISY` of their median; returns the rows."""
    for r in rows:
        if "median_ms" in r:
            spread = (r["q3_ms"] - r["q1_ms"]) / r["median_ms"] if r["median_ms"] > 0 else 0.0
            r["noisy"] = "!" if spread > NOISY else ""
    return rows


def noisy_lines(result) -> list:
    """A warning naming the measurements whose repeats disagree (``noisy``), or nothing."""
    rows = [r for key in ("kernels", "training") for r in result[key] if r.get("noisy")]
    if not rows:
        return []
    names = sorted({f"{r['case']} {r.get('mode', '')} {r.get('provider', r.get('variant'))}"
                    .replace("  ", " ") for r in rows})
    return [f"WARNING: {len(rows)} measurement(s) spread by more than {NOISY:.0%} of their "
            f"median over the repeats (marked '!'); their ratios are unreliable: rerun on a "
            f"quiet machine or with more --repeats: {'; '.join(names)}"]


def format_table(rows, columns, labels, markdown=False) -> str:
    """A plain-text (aligned) or Markdown table; the first ``labels`` columns name the row, and
    a failed row shows its error after them."""
    def cell(r, key, fmt):
        if key == "iqr_ms" and "q3_ms" in r:
            return fmt.format(r["q3_ms"] - r["q1_ms"])
        v = r.get(key)
        return "-" if v is None else fmt.format(v)

    head = [h for h, _, _ in columns]
    body = [[cell(r, k, f) for _, k, f in columns] if "error" not in r else
            [cell(r, k, f) for _, k, f in columns[:labels]] + [f"error: {r['error']}"]
            for r in rows]
    if markdown:
        return "\n".join("| " + " | ".join(c.replace("|", "/") for c in line) + " |"
                         for line in [head, ["---"] * len(head), *body])
    full = [line for line in [head, *body] if len(line) == len(head)]
    width = [max(len(line[i]) for line in full) for i in range(len(head))]

    def fmt_line(cells):
        return "  ".join(c.ljust(w) if i < labels else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, width))).rstrip()
    return "\n".join([fmt_line(head), "  ".join("-" * w for w in width), *map(fmt_line, body)])


def target_lines(kernels, training) -> list:
    """The issue's targets, each with the measured value and PASS/MISS."""
    out = []

    def check(label, value, ok):
        if value is not None:
            out.append(f"{'PASS' if ok(value) else 'MISS'}  {label}: {value:.2f}")

    for r in kernels:
        if (r["op"] == "sharpen_focus_loss" and r["mode"] == "fwd+bwd"
                and r["provider"] not in ("eager", "compile")):
            check(f"{r['case']} {r['provider']} fwd+bwd x eager (target >= 2)",
                  r.get("vs_eager"), lambda v: v >= 2.0)
    for r in training:
        if r["variant"] == "sf1_attnfast":
            check(f"{r['case']} first-order step x baseline (target <= 1.10)",
                  r.get("time_x_baseline"), lambda v: v <= 1.10)
            check(f"{r['case']} first-order x faster than hooks (target >= 2.2)",
                  r.get("speedup_vs_hooks"), lambda v: v >= 2.2)
            check(f"{r['case']} first-order peak memory x baseline (target <= 1.10)",
                  r.get("mem_x_baseline"), lambda v: v <= 1.10)
        if r["variant"] == "sf2_attnfast":
            check(f"{r['case']} second-order step x baseline (target <= 1.5)",
                  r.get("time_x_baseline"), lambda v: v <= 1.5)
    return out


def _git(*args) -> str:
    try:
        return subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[2]), *args],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(cfg: Config) -> dict:
    """Device, library versions, commit and date of this run."""
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    try:
        import attnfast
        version = getattr(attnfast, "__version__", None)
    except Exception:  # noqa: BLE001
        version = None
    return {"device": _device_name(cfg.device), "device_type": cfg.device,
            "cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "attnfast": version, "backends": device_backends(cfg.device),
            "commit": _git("rev-parse", "HEAD") or None,
            "dirty": bool(_git("status", "--porcelain")),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "loadavg": loadavg(), "platform": platform.platform(), "argv": sys.argv[1:]}


def loadavg():
    """1-minute load average (a busy machine makes every number noisier), None if unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def plot(result: dict, path: Path) -> None:
    """PNG: fwd+bwd speed-up over eager per kernel case and provider (log scale), and the
    training steps' time and peak memory over the baseline step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kern = [r for r in result["kernels"] if r["mode"] == "fwd+bwd" and r.get("vs_eager")]
    train = [r for r in result["training"] if r.get("time_x_baseline")]
    panels = [p for p in (kern, train) if p]
    if not panels:
        return
    cases = list(dict.fromkeys(r["case"] for r in kern))
    provs = [p for p in dict.fromkeys(r["provider"] for r in kern) if p != "eager"]
    tcases = list(dict.fromkeys(f"{r['case']} {r['variant']}" for r in train))
    heights = [max(2.5, 0.28 * len(cases) * max(1, len(provs) / 2)) if kern else 0,
               max(2.5, 0.3 * len(tcases)) if train else 0]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.2 + sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": [h for h in heights if h]})
    meta = result["meta"]
    cfg = result["config"]
    fig.suptitle(f"attnfast on {meta['device']} ({cfg['dtype']}{', quick' if cfg['quick'] else ''}"
                 f", {meta['cpu_threads']} threads, load {meta.get('loadavg')}, "
                 f"{meta['date'][:10]}, {(meta['commit'] or '?')[:8]})", fontsize=10)
    ax_i = 0
    if kern:
        ax, bar = axes[ax_i][0], 0.8 / max(1, len(provs))
        for j, p in enumerate(provs):
            val = {r["case"]: r["vs_eager"] for r in kern if r["provider"] == p}
            ax.barh([i + j * bar for i in range(len(cases))], [val.get(c, 0) for c in cases],
                    height=bar, label=p)
        ax.set_yticks([i + 0.4 - bar / 2 for i in range(len(cases))], cases, fontsize=7)
        ax.set_xscale("log")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("fwd+bwd speed-up over eager (x, log)")
        if provs:
            ax.legend(fontsize=8)
        ax_i += 1
    if train:
        ax = axes[ax_i][0]
        pos = range(len(tcases))
        ax.barh([i - 0.2 for i in pos], [r["time_x_baseline"] for r in train], 0.4,
                label="step time")
        ax.barh([i + 0.2 for i in pos], [r.get("mem_x_baseline") or 0 for r in train], 0.4,
                label="peak memory")
        ax.set_yticks(list(pos), tcases, fontsize=8)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("x baseline cross-entropy step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(result, out, name):
    """``<out>/<name>-<UTC date of result["meta"]>.json``; returns that path without suffix, the
    stem the Markdown and the plot of the same run take."""
    stamp = result["meta"]["date"][:19].replace(":", "").replace("-", "")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{name}-{stamp}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    return stem


def write_results(result: dict, out: Path) -> Path:
    """<out>/<device>-<dtype>[-cl]-<date>.{json,md,png}; returns the stem."""
    cfg, meta = result["config"], result["meta"]
    tag = meta["device_type"] if meta["device_type"] == "cpu" else "".join(
        c if c.isalnum() else "_" for c in meta["device"].lower()).strip("_")
    stem = write_json(result, out, f"{tag}-{cfg['dtype']}{'-cl' if cfg['channels_last'] else ''}")
    md = [f"# attnfast benchmarks: {meta['device']}", "",
          f"{meta['date']}, torch {meta['torch']}, triton {meta['triton']}, commit "
          f"{meta['commit']}{' (dirty)' if meta['dirty'] else ''}, {cfg['dtype']}"
          f"{', channels_last' if cfg['channels_last'] else ''}"
          f"{', --quick' if cfg['quick'] else ''}, {meta['cpu_threads']} CPU threads, load "
          f"average {meta.get('loadavg')} -> {meta.get('loadavg_end')}; device copy "
          f"{result['copy']['gbps']:.1f} GB/s", ""]
    both = [r for r in result["kernels"] if r["mode"] == "fwd+bwd"]
    for title, rows, columns in (("Training steps", result["training"], TRAIN_COLUMNS),
                                 ("Kernels, forward + backward", both, KERNEL_COLUMNS),
                                 ("Kernels, all modes", result["kernels"], KERNEL_COLUMNS)):
        if rows:
            md += [f"## {title}", "", format_table(rows, columns, 3, True), ""]
    if result["targets"]:
        md += ["## Targets", "", *[f"- {t}" for t in result["targets"]], ""]
    md += [*noisy_lines(result), "", *LEGEND, ""]
    stem.with_suffix(".md").write_text("\n".join(md))
    plot(result, stem.with_suffix(".png"))
    return stem
