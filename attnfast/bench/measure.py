"""The measurements of one run: every kernel case (one row per case, mode and provider) and
every training case (one row per network and variant), with the ratios between them."""
from __future__ import annotations

from .cases import MB, MODES, Config, selected_kernel_cases, selected_training_cases
from .providers import providers
from .report import environment, flag_noisy, loadavg, target_lines
from .timing import (Timed, cache_flusher, copy_bandwidth, describe, peak_extra, summarize,
                     time_interleaved)
from .workloads import KernelWorkload, TrainStep, train_variants


def run_kernels(cfg: Config, copy: dict, log=print) -> list:
    """One row per (case, mode, provider), the providers taking turns call by call; a provider
    that fails leaves its error in its rows and the others go on."""
    rows, provs, flush = [], providers(cfg), cache_flusher(cfg)
    for case in selected_kernel_cases(cfg):
        work, fns = KernelWorkload(case, cfg), {}
        for prov in provs:
            try:
                fns[prov.name] = prov.fn(case.op)
            except Exception as exc:  # noqa: BLE001
                fns[prov.name] = describe(exc)
        for mode in MODES:
            entries = [Timed(p.name, *work.closures(fns[p.name], mode), p.context)
                       for p in provs if not isinstance(fns[p.name], str)]
            time_interleaved(entries, work.n_sets, cfg.warmup, cfg.repeats, cfg.device, flush)
            for p in provs:
                e = next((e for e in entries if e.name == p.name), None)
                error = fns[p.name] if e is None else e.error
                if error is None:
                    try:
                        with p.context():
                            mem = peak_extra(e.prepare, e.run, cfg.device)
                    except Exception as exc:  # noqa: BLE001
                        error = describe(exc)
                if error is not None:
                    rows.append({"case": case.name, "op": case.op, "mode": mode,
                                 "provider": p.name, "error": error})
                    log(f"  {case.name} {mode} {p.name}: {error}")
                    continue
                s = summarize(e.samples)
                gbps = work.bytes[mode] / s["median_ms"] / 1e6
                rows.append({"case": case.name, "op": case.op, "mode": mode, "provider": p.name,
                             **s, "bytes": work.bytes[mode], "gbps": gbps,
                             "pct_copy": 100.0 * gbps / copy["gbps"], "peak_extra_mb": mem / MB})
        log(f"  done {case.name}")
        del work, fns
    for base in ("eager", "compile"):
        _add_ratios(rows, ("case", "mode"), "provider", base, f"vs_{base}")
    return rows


def _add_ratios(rows, group, who, base, name, key="median_ms", speedup=True):
    """Within each group of rows (same values of the ``group`` keys), ``row[name]`` compares
    ``row[key]`` with that of the row whose ``who`` is ``base``: base / row when ``speedup``
    (> 1: the row is faster), else row / base. None where either is missing."""
    ref = {tuple(r[k] for k in group): r[key] for r in rows if r.get(who) == base and key in r}
    for r in rows:
        b = ref.get(tuple(r[k] for k in group))
        r[name] = None if not b or key not in r else (b / r[key] if speedup else r[key] / b)


def run_training(cfg: Config, log=print) -> list:
    """One row per (net, variant): step time and peak memory, with ratios to the baseline step
    (``time_x_baseline``, ``mem_x_baseline``) and the speed-up over the hooks approach."""
    rows = []
    for case, net in selected_training_cases(cfg):
        steps, entries = {}, []
        for name in train_variants():
            try:
                steps[name] = TrainStep(cfg, net, name)
                entries.append(Timed(name, lambda i: None, steps[name].step))
            except Exception as exc:  # noqa: BLE001  -- keep going, report it
                steps[name] = describe(exc)
        time_interleaved(entries, 1, cfg.train_warmup, cfg.train_repeats, cfg.device)
        for name, t in steps.items():
            e = next((e for e in entries if e.name == name), None)
            error = t if e is None else e.error
            if error is None:
                try:
                    extra = peak_extra(lambda i: None, t.step, cfg.device)
                except Exception as exc:  # noqa: BLE001
                    error = describe(exc)
            if error is not None:
                rows.append({"case": case, "variant": name, "error": error})
                log(f"  {case} {name}: {error}")
                continue
            rows.append({"case": case, "variant": name, "batch": net.n, "ops": t.ops,
                         **summarize(e.samples), "peak_extra_mb": extra / MB,
                         "peak_mb": (t.resident_bytes() + extra) / MB})
        log(f"  done {case}")
        del steps, entries
    _add_ratios(rows, ("case",), "variant", "baseline", "time_x_baseline", speedup=False)
    _add_ratios(rows, ("case",), "variant", "baseline", "mem_x_baseline", key="peak_mb",
                speedup=False)
    _add_ratios(rows, ("case",), "variant", "sf1_hooks", "speedup_vs_hooks")
    return rows


def run(cfg: Config, kernels=True, training=True, log=print) -> dict:
    """Everything one invocation measures, as the dict written to JSON."""
    log(f"attnfast.bench: {cfg.device} {cfg.dtype}, providers "
        f"{[p.name for p in providers(cfg)]}, {cfg.repeats} repeats")
    meta = environment(cfg)
    copy = copy_bandwidth(cfg)
    log(f"  device copy: {copy['gbps']:.1f} GB/s")
    krows = flag_noisy(run_kernels(cfg, copy, log) if kernels else [])
    trows = flag_noisy(run_training(cfg, log) if training else [])
    meta["loadavg_end"] = loadavg()
    return {"meta": meta, "config": dict(vars(cfg)),
            "copy": copy, "kernels": krows, "training": trows,
            "targets": target_lines(krows, trows)}
