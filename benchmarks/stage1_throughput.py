"""Stage-1 LLM throughput on real stage-1 prompts: backend x dtype x threads x prefix sharing.

    python benchmarks/stage1_throughput.py                        # transformers, default variants
    python benchmarks/stage1_throughput.py --n 64 --variants float32:1:plain:32,float32:auto:shared:64
    python benchmarks/stage1_throughput.py --profile               # where the time goes (plain path)
    python benchmarks/stage1_throughput.py --backend vllm          # runs in .venv-vllm if present

Prompts: ``dataset/ml-100k-session`` (convert it first: ``python -m recbole_llm4sbr.data.converters
ml-100k``), the unique prefixes in the pipeline's order (sessions' prefixes side by side, as
``intent_samples: all`` asks them), both views, ``intent_prompt_max_items`` 10, written by the
project's own ``intent.prompts.build_prompt`` and template; the first ``--n`` prompts.

A variant is ``dtype:threads:sharing:batch`` (threads ``auto`` = all cores; sharing ``plain`` = one
left-padded ``generate`` per batch, ``tree`` = prefix-tree prefill + ``generate`` from the cache,
``shared`` = prefix-tree prefill + the backend's in-place greedy loop, the default). Each runs the prompts through ``answer_prompts`` (fresh answer cache, chunks of the
backend's ``prompts_per_call``) after a short warm-up, best of ``--reps`` (variants alternating), variants alternating, and reports prompts/s,
prefill tokens computed against prompt tokens (what prefix sharing saves; the plain path's figure
includes padding), prefill tokens/s (prompt tokens / s, decode included in the time: an upper bound
on what the prefill alone costs), its share of the matmul limit (a 2048^2 matmul of the fastest
dtype at the same threads, measured in this run; 0.27 GFLOP per token for a 135M model), and how
many answers differ from the first variant's (the float32 reference). Variants of a dtype this CPU
has no hardware for (bf16 without amx_bf16/avx512_bf16) are skipped with a note: emulated bf16 is
far slower than float32.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: forward FLOPs per token of SmolLM2-135M (2 x parameters, lm_head only on the last token)
GFLOP_PER_TOKEN = 0.27
DEFAULT_VARIANTS = ("float32:1:plain:32,float32:auto:plain:64,float32:auto:tree:64,float32:auto:shared:64,"
                    "bfloat16:auto:plain:64,bfloat16:auto:shared:64")


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def real_prompts(n: int, dataset: str = "ml-100k-session", max_items: int = 10):
    """The first ``n`` stage-1 prompts of ``dataset`` (pipeline order: prefix by prefix, views together)."""
    from recbole_llm4sbr.intent import pipeline
    from recbole_llm4sbr.intent.prompts import build_prompt
    from recbole_llm4sbr.intent.settings import intent_views, load_settings

    settings = load_settings(dataset, overrides={"data_path": str(ROOT / "dataset")})
    samples = pipeline.read_samples(settings)
    prefixes = pipeline.unique_prefixes(samples)
    texts = pipeline.read_item_text(settings)
    views = intent_views(settings)
    template = str(settings["intent_template"])
    prompts = []
    for key in prefixes:
        for q in views.values():
            prompts.append(build_prompt(template, prefixes[key], texts, q, max_items))
        if len(prompts) >= n:
            break
    return prompts[:n], template, len(prefixes)


def matmul_gflops(dtype_name: str, threads: int, size: int = 2048, budget_s: float = 20.0) -> float:
    """Best-of GFLOP/s of a ``size``^2 matmul; a dtype that is too slow for a 512^2 probe within the
    budget (emulated bf16) is measured on the probe only."""
    import torch

    dtype = getattr(torch, dtype_name)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        probe = torch.randn(512, 512, dtype=dtype)
        t = time.perf_counter()
        probe @ probe
        probe_s = time.perf_counter() - t
        n = size if probe_s * (size / 512) ** 3 * 4 < budget_s else 512
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        return 2 * n ** 3 / best / 1e9
    finally:
        torch.set_num_threads(before)


def parse_variant(text: str):
    dtype, threads, sharing, batch = (text.split(":") + ["", "", "", ""])[:4]
    sharing = sharing or "shared"
    if sharing not in ("plain", "shared", "tree"):
        raise SystemExit(f"variant {text!r}: sharing is plain, shared or tree")
    return dict(dtype=dtype or "float32", threads=threads or "auto", sharing=sharing != "plain",
                loop=sharing == "shared", mode=sharing, batch=int(batch or 64))


def make_backend(v, args):
    from recbole_llm4sbr.intent.backends.transformers_backend import TransformersBackend

    return TransformersBackend(dict(
        intent_model=args.model, intent_max_tokens=args.max_tokens, intent_temperature=0.0,
        intent_top_p=1.0, intent_seed=2024, intent_batch_size=v["batch"], intent_device="cpu",
        intent_dtype=v["dtype"], intent_num_threads=v["threads"], intent_prefix_sharing=v["sharing"], intent_greedy_loop=v.get("loop", True),
        intent_prompts_per_call=max(v["batch"], args.per_call)))


class _Counting:
    """Wraps a backend to add up its prefill read-out over the calls answer_prompts makes."""

    def __init__(self, backend):
        self.b = backend
        self.name = backend.name
        self.prompts_per_call = backend.prompts_per_call
        self.prompt_tokens = self.computed = 0

    def describe(self):
        return self.b.describe()

    def count_tokens(self, texts):
        return self.b.count_tokens(texts)

    def generate(self, prompts):
        out = self.b.generate(prompts)
        self.prompt_tokens += self.b.last_prefill["prompt_tokens"]
        self.computed += self.b.last_prefill["computed_tokens"]
        return out


def run_variants(variants, prompts, args, tmp, tv):
    """All variants' backends loaded first, then the reps round-robin (variant 1, 2, ..., 1, 2, ...),
    best of ``--reps`` each: on a shared machine the load drifts, and alternating spreads it over all
    variants instead of penalising whichever ran during a busy minute."""
    from recbole_llm4sbr.intent.backends.transformers_backend import resolve_num_threads
    from recbole_llm4sbr.intent.cache import AnswerCache
    from recbole_llm4sbr.intent.generation import answer_prompts

    results = []
    for v in variants:
        t = time.perf_counter()
        backend = make_backend(v, args)
        results.append(dict(v, backend=backend, threads_n=resolve_num_threads(v["threads"]),
                            load_s=time.perf_counter() - t, wall_s=float("inf")))
        backend.generate(prompts[-4:])  # warm-up
    try:
        for rep in range(args.reps):
            for k, r in enumerate(results):
                c = _Counting(r["backend"])
                with AnswerCache(tmp / f"v{k}-{rep}.sqlite", r["backend"].describe(), tv) as cache:
                    t, cpu = time.perf_counter(), time.process_time()
                    got, _ = answer_prompts(c, prompts, cache, r["batch"], progress=False)
                    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
                print(f"  rep {rep + 1} {r['text']}: {wall:.1f} s (cpu {cpu:.1f} s), prefill computed "
                      f"{c.computed} of {c.prompt_tokens} prompt tokens; load {load_average()}", flush=True)
                if wall < r["wall_s"]:
                    r.update(wall_s=wall, cpu_s=cpu, prompts_per_s=len(prompts) / wall, answers=got,
                             prompt_tokens=c.prompt_tokens, computed=c.computed, load=load_average())
    finally:
        for r in results:
            r.pop("backend").close()
    return results


def profile(prompts, args):
    """Where the plain path's time goes, on ``prompts``: chat template + tokenization, prefill (one
    forward, lm_head on the last token only) and the rest of ``generate`` (decode steps + overhead),
    padding, per dtype x threads x batch."""
    import torch

    from recbole_llm4sbr.intent.backends.transformers_backend import cpu_has_fast_bf16

    lines = []
    dtypes = ["float32"] + (["bfloat16"] if cpu_has_fast_bf16() else [])
    if not cpu_has_fast_bf16():
        lines.append("bfloat16 not profiled: no amx_bf16/avx512_bf16 on this CPU (emulated bf16)")
    for dtype in dtypes:
        b = make_backend(dict(dtype=dtype, threads="1", sharing=False, batch=32), args)
        t = time.perf_counter()
        texts = [b._chat_text(p) for p in prompts]
        t_tmpl = time.perf_counter() - t
        t = time.perf_counter()
        enc = b.tokenizer(texts, add_special_tokens=False)["input_ids"]
        t_tok = time.perf_counter() - t
        lines.append(f"[{dtype}] chat template {1000 * t_tmpl / len(prompts):.2f} ms/prompt, tokenize "
                     f"{1000 * t_tok / len(prompts):.2f} ms/prompt; prompt tokens mean "
                     f"{sum(map(len, enc)) / len(enc):.0f}, min {min(map(len, enc))}, max {max(map(len, enc))}")
        enc = sorted(enc, key=len)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            b._generate_batch(enc[:2])  # warm-up: one-time allocations and kernel selection
            for bs in args.profile_batches:
                if bs > len(enc):
                    continue
                batch = enc[:bs]  # shortest: similar lengths, as the backend's own sort gives
                width = max(map(len, batch))
                ids = torch.full((bs, width), b.pad_token_id, dtype=torch.long)
                mask = torch.zeros((bs, width), dtype=torch.long)
                for r, x in enumerate(batch):
                    ids[r, width - len(x):] = torch.tensor(x)
                    mask[r, width - len(x):] = 1
                with torch.inference_mode():
                    t = time.perf_counter()
                    b.model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
                    t_pre = time.perf_counter() - t
                t = time.perf_counter()
                out = b._generate_batch(batch)
                t_gen = time.perf_counter() - t
                ntok = b.count_tokens(out)
                real = sum(map(len, batch))
                lines.append(
                    f"[{dtype}] threads {threads} batch {bs:3d}: prefill {t_pre:6.2f} s "
                    f"({real / t_pre:6.0f} real tok/s, padding {100 * (1 - real / (bs * width)):4.1f} %), "
                    f"generate {t_gen:6.2f} s = {bs / t_gen:5.2f} prompts/s, decode+overhead "
                    f"{t_gen - t_pre:6.2f} s ({100 * (t_gen - t_pre) / t_gen:3.0f} %), answer tokens "
                    f"{ntok / bs:.1f}/prompt; load {load_average()}")
                print(lines[-1], flush=True)
        b.close()
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="transformers", choices=("transformers", "vllm"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=256, help="prompts (default 256)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma list of dtype:threads:sharing:batch")
    ap.add_argument("--per-call", type=int, default=256, help="intent_prompts_per_call")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="profile the plain path instead")
    ap.add_argument("--profile-batches", default="16,32,64,128")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stage1_throughput.txt"))
    args = ap.parse_args(argv)
    args.profile_batches = [int(x) for x in str(args.profile_batches).split(",") if x]

    if args.backend == "vllm":
        venv = ROOT / ".venv-vllm" / "bin" / "python"
        if not venv.is_file():
            print("skip vllm: no .venv-vllm here (bash .ci/vllm_env.sh builds it)")
            return 0
        if Path(sys.executable).resolve() != venv.resolve():
            print(f"vllm: run this script with {venv} (not done automatically: the vLLM engine needs "
                  "its own process setup); the transformers rows do not apply there")
            return 0
        print("vllm: see benchmarks/stage1_overhead.py --backend vllm for the vLLM figures")
        return 0

    import platform

    import torch

    from recbole_llm4sbr.intent.backends.transformers_backend import cpu_has_fast_bf16, resolve_num_threads
    from recbole_llm4sbr.intent.prompts import template_version

    cmd = "python benchmarks/stage1_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    prompts, template, n_prefixes = real_prompts(args.n)
    head = [f"command: {cmd}",
            f"python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {__import__('transformers').__version__}; CPU "
            f"{platform.processor() or platform.machine()}, {resolve_num_threads('auto')} usable cores, "
            f"fast bf16 (amx_bf16/avx512_bf16): {cpu_has_fast_bf16()}; start load {load_average()}",
            f"prompts: first {len(prompts)} of ml-100k-session ({n_prefixes} unique prefixes x 2 views), "
            f"intent_prompt_max_items 10, max_new_tokens {args.max_tokens}"]
    for line in head:
        print(line, flush=True)
    if args.profile:
        lines = profile(prompts, args)
        out = Path(args.out).with_name("stage1_profile.txt")
        out.write_text("\n".join(head + lines + [f"end load {load_average()}"]) + "\n", encoding="utf-8")
        print(f"written {out}")
        return 0

    limits = {}
    rows = []
    skipped = []
    with tempfile.TemporaryDirectory(prefix="llm4sbr-tput-") as d:
        tmp = Path(d)
        variants = []
        for text in [x.strip() for x in args.variants.split(",") if x.strip()]:
            v = dict(parse_variant(text), text=text)
            if v["dtype"] in ("bfloat16", "bf16") and not cpu_has_fast_bf16():
                skipped.append(f"{text}: skipped, this CPU has no amx_bf16/avx512_bf16 (bf16 emulated: "
                               f"{matmul_gflops('bfloat16', 1, 512):.1f} GFLOP/s at 512^2, 1 thread)")
                print(skipped[-1], flush=True)
                continue
            variants.append(v)
        # the limit before and after the variants, the best kept: the load drifts during a run
        dts = ["float32"] + (["bfloat16"] if cpu_has_fast_bf16() else [])
        for key in sorted({resolve_num_threads(v["threads"]) for v in variants}):
            limits[key] = max((matmul_gflops(dt, key), dt) for dt in dts)
        rows = run_variants(variants, prompts, args, tmp, template_version(template))
        for r in rows:
            key = r["threads_n"]
            limits[key] = max([limits.get(key, (0.0, "float32"))] + [(matmul_gflops(dt, key), dt) for dt in dts])

    ref = rows[0]["answers"] if rows else None
    table = ["",
             "| dtype | threads | path | batch | prompts/s (wall) | prompts per CPU-s | prompt tokens | "
             "prefill tokens computed | saved | prompt tok/s | % of matmul limit | % of limit per CPU-s | "
             "answers changed vs first row | "
             "load (1 min) |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gflops, dt = limits[r["threads_n"]]
        tok_s = r["prompt_tokens"] / r["wall_s"]
        pct = 100 * r["computed"] / r["wall_s"] * GFLOP_PER_TOKEN / gflops
        # CPU time is what the variant's threads used: on a shared machine it is the figure the load
        # does not inflate (the limit per thread is the N-thread limit / N)
        pct_cpu = 100 * r["computed"] / r["cpu_s"] * GFLOP_PER_TOKEN / (gflops / r["threads_n"])
        changed = sum(a != b for a, b in zip(r["answers"], ref))
        table.append(f"| {r['dtype']} | {r['threads_n']} | {r['mode']} | {r['batch']} | "
                     f"{r['prompts_per_s']:.2f} | {len(ref) / r['cpu_s']:.2f} | {r['prompt_tokens']} | {r['computed']} | "
                     f"{100 * (1 - r['computed'] / max(1, r['prompt_tokens'])):.0f} % | {tok_s:.0f} | "
                     f"{pct:.0f} % | {pct_cpu:.0f} % | {changed}/{len(ref)} | {r['load'].split()[0]} |")
    notes = ["matmul limit (2048^2, best dtype, same threads): "
             + ", ".join(f"{k} threads {g:.0f} GFLOP/s ({dt})" for k, (g, dt) in sorted(limits.items()))]
    notes += skipped
    notes.append("% of matmul limit = prefill tokens computed x 0.27 GFLOP / wall (decode included in the "
                 "wall: a lower bound on the prefill's own share); per CPU-s: the same over the process's CPU "
                 "time against the limit per thread (what a loaded machine's wall time hides)")
    if rows:
        best = max(rows, key=lambda r: r["prompts_per_s"])
        total = 2 * n_prefixes
        notes.append(f"intent_samples all on ml-100k-session = {total} prompts: at the best rate here "
                     f"({best['prompts_per_s']:.2f} prompts/s) about {total / best['prompts_per_s'] / 60:.0f} min "
                     f"of LLM time (the first prompts of the file are representative only if its prefix "
                     f"structure is; the full run shares at least as much per call)")
    notes.append(f"end load {load_average()}")
    for line in table + notes:
        print(line)
    Path(args.out).write_text("\n".join(head + table + notes) + "\n", encoding="utf-8")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
