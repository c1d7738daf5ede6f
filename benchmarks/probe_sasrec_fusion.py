"""Why does LLM4SBR_SASRec lose to stock SASRec? Probes of the fused session vector.

SASRec is wrapped with the generic pair (global = its transformer output at the last position, local =
the last item's raw embedding) and the fused vector ``W [a_g H_g; a_l H_l]`` replaces its output with no
normalisation. Each probe patches one of those in this process only and trains ``LLM4SBR_SASRec`` with
the setting the fair protocol chose for ``llm4sbr`` (lr 1e-3, x0.1 every 3 epochs, cap 50, early stopping after 5;
``--lr_step_size=0``: constant, the schedule stock SASRec chose):

- ``twin``: the local view is the transformer output too (is the raw-embedding view what hurts?);
- ``ln``: the fused vector goes through a parameter-free layer norm, as SASRec's own output does
  (is it the fused vector's scale?);
- ``eye``: the fusion's output layer starts as ``[I, 0]`` (the gated global view passes through) instead
  of PyTorch's random init: is it where the mix starts from?
- ``nogate``: the segments enter the output layer unscaled (``W [H_g; H_l]``): is it the gates?
- ``residual``: the fused vector is added to the global view (``H_g + W [...]``) instead of replacing it;
- ``bypass``: the fusion returns the global view unchanged (SASRec's own output scores; the alignment
  loss still shapes the views): is it the fusion, or the loss acting on SASRec's representation?

    OMP_NUM_THREADS=1 python benchmarks/probe_sasrec_fusion.py --probe=twin --seeds=2020,2021,2022

Prints one line per run: probe, seed, best valid MRR@20, best epoch, test Recall@20 / MRR@20. The stock
and unpatched rows are the benchmark's cells (``results/ml-100k-session/report.md``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from recbole_llm4sbr.model import views  # noqa: E402
from recbole_llm4sbr.model.fusion import GatedFusion  # noqa: E402
from recbole_llm4sbr.quick_start import run_recbole_llm4sbr  # noqa: E402


def patch(probe: str) -> None:
    if probe == "twin":
        def twin(self, model, call):
            out = call.base_forward(model)
            return out, out
        views.GenericViews.views = twin
    elif probe == "ln":
        views.GenericViews.finish = lambda self, model, fused: F.layer_norm(fused, fused.shape[-1:])
    elif probe == "bypass":
        GatedFusion.forward = lambda self, behaviour, intents=None: behaviour["global"]
    elif probe == "eye":
        init = GatedFusion.__init__

        def eye_init(self, hidden_size, *args, **kwargs):
            init(self, hidden_size, *args, **kwargs)
            with torch.no_grad():
                self.out.weight.zero_()
                self.out.weight[:, :hidden_size] = torch.eye(hidden_size)
        GatedFusion.__init__ = eye_init
    elif probe in ("nogate", "residual"):
        gated = GatedFusion.forward

        def nogate(self, behaviour, intents=None):
            return self.out(torch.cat([behaviour[self.pairing[v]] for v in self.views]
                                      + [behaviour[b] for b in self.unpaired], dim=-1))

        def residual(self, behaviour, intents=None):
            return behaviour["global"] + gated(self, behaviour, intents)
        GatedFusion.forward = nogate if probe == "nogate" else residual
    elif probe != "none":
        raise SystemExit(f"--probe={probe!r}: use twin, ln, eye, nogate, residual, bypass or none")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", required=True)
    parser.add_argument("--seeds", default="2020,2021,2022")
    parser.add_argument("--intent_control", default="none", help="none (llm4sbr) or constant (arch)")
    parser.add_argument("--lr_step_size", type=int, default=3,
                        help="3: llm4sbr's chosen schedule (x0.1 every 3 epochs); 0: constant, stock SASRec's")
    args = parser.parse_args()
    patch(args.probe)
    for seed in [int(s) for s in args.seeds.split(",")]:
        config = {"seed": seed, "learning_rate": 1e-3, "lr_step_size": args.lr_step_size, "lr_gamma": 0.1,
                  "epochs": 50, "stopping_step": 5, "show_progress": False, "intent_control": args.intent_control,
                  "checkpoint_dir": f"saved/probe_{args.probe}_{args.lr_step_size}_{seed}"}
        result = run_recbole_llm4sbr("LLM4SBR_SASRec", "ml-100k-session", config_dict=config,
                                     read_cmd_line=False)
        trainer = result["built"].trainer
        best_epoch = trainer.saves[-1][0] if trainer.saves else None
        print(json.dumps({"probe": args.probe, "lr_step_size": args.lr_step_size,
                          "intent_control": args.intent_control, "seed": seed,
                          "valid_mrr@20": round(float(result["best_valid_score"]), 4), "best_epoch": best_epoch,
                          "test_recall@20": round(float(result["test_result"]["recall@20"]), 4),
                          "test_mrr@20": round(float(result["test_result"]["mrr@20"]), 4)}), flush=True)


if __name__ == "__main__":
    main()
