"""EAFT in the trainers people use: the config fragment for LLaMA-Factory, Axolotl or TRL.

    text = trainer_fragment("axolotl", LossConfig(kind="eaft", k=20, alpha=1.0), verdict)

- LLaMA-Factory (SFT stage): `use_eaft_loss`, `eaft_alpha`. Its loss fixes K = 20 and divides
  the top-K entropy by 3.0 (Telltale's norm "code"); there is no K setting. Under the Liger
  kernel its SFT runs the fused linear cross-entropy, which returns no logits, and its EAFT loss
  then falls back to the model's own loss: plain SFT without a word. The fragment turns the
  kernel off (`enable_liger_kernel: false`).
- Axolotl: `use_eaft`, `eaft_alpha`, `eaft_k`. The version read when this was written weights by
  H_K^alpha without dividing by ln K: a constant factor (ln K)^alpha, which Adam cancels.
- TRL: Telltale's own loss as `SFTTrainer(compute_loss_func=...)`, with `GateLogCallback`, which
  refuses to train when Liger's fused cross-entropy would compute the loss without calling it
  (`core.control.eaft_trainer`).
Each fragment records the data's suitability verdict (`core.control.suitability`) as a comment.
"""

from __future__ import annotations

from core.control.eaft import LossConfig
from core.control.suitability import Suitability

EXPORT_FORMATS = ("llamafactory", "axolotl", "trl")
FILE_NAMES = {"llamafactory": "eaft_llamafactory.yaml", "axolotl": "eaft_axolotl.yaml",
              "trl": "eaft_trl.py"}
LLAMAFACTORY_K = 20


def _header(fmt: str, verdict: Suitability | None, data: str | None) -> list[str]:
    lines = [f"EAFT (entropy-adaptive fine-tuning) for {fmt}, written by "
             f"`telltale eaft-stats --export {fmt}`."]
    if verdict is not None:
        lines.append(f"Data{f' {data}' if data else ''}: {verdict.verdict.replace('_', ' ')} "
                     f"({verdict.conflict_loss_share:.0%} of the SFT loss in confident "
                     f"conflicts, {verdict.uncertain_loss_share:.0%} in uncertain tokens).")
    return lines


def _comment(lines: list[str], mark: str) -> str:
    return "".join(f"{mark} {line}\n" for line in lines)


def trainer_fragment(fmt: str, config: LossConfig, verdict: Suitability | None = None,
                     data: str | None = None) -> str:
    """The fragment for `fmt` (one of EXPORT_FORMATS) carrying `config`'s K, alpha and norm.
    Raises ValueError for a loss the trainer cannot express."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"The export format must be one of {', '.join(EXPORT_FORMATS)}, not "
                         f"{fmt!r}.")
    if config.kind != "eaft":
        raise ValueError(f"Only the eaft loss can be exported, not {config.kind!r}.")
    head = _header(fmt, verdict, data)
    if fmt == "llamafactory":
        if config.k != LLAMAFACTORY_K:
            raise ValueError(f"LLaMA-Factory's EAFT has no K setting (it uses K = "
                             f"{LLAMAFACTORY_K}); use --k {LLAMAFACTORY_K}, or export for "
                             "axolotl or trl.")
        head += ["Merge into an SFT config (stage: sft). Its loss: top-20 entropy / 3.0, raised "
                 "to eaft_alpha (Telltale's --norm code).",
                 "Under the Liger kernel its SFT drops the logits and the EAFT loss falls back "
                 "to plain cross-entropy without a word: keep the kernel off."]
        return (_comment(head, "#") + "use_eaft_loss: true\n"
                f"eaft_alpha: {config.alpha:g}\nenable_liger_kernel: false\n")
    if fmt == "axolotl":
        head += ["Merge into an Axolotl config. Its loss weights by the top-K entropy raised to "
                 "eaft_alpha (not divided by ln K: a constant factor, which Adam cancels)."]
        return (_comment(head, "#") + "use_eaft: true\n"
                f"eaft_alpha: {config.alpha:g}\neaft_k: {config.k}\n")
    head += ["Telltale's loss through SFTTrainer(compute_loss_func=...); define `model` and "
             "`dataset` first.",
             "GateLogCallback logs the gate's mean and the conflict share, and stops with an "
             "error when Liger's fused cross-entropy would compute the loss without this one."]
    return (_comment(head, "#") + "from trl import SFTConfig, SFTTrainer\n\n"
            "from core.control.eaft import LossConfig\n"
            "from core.control.eaft_trainer import GatedLossFunc, GateLogCallback\n\n"
            f"loss_fn = GatedLossFunc(LossConfig(kind=\"eaft\", k={config.k}, "
            f"alpha={config.alpha!r}, norm={config.norm!r}))\n"
            "args = SFTConfig(output_dir=\"eaft-sft\", use_liger_kernel=False)\n"
            "trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,\n"
            "                     compute_loss_func=loss_fn, "
            "callbacks=[GateLogCallback(loss_fn)])\n"
            "trainer.train()\n")


__all__ = ["EXPORT_FORMATS", "FILE_NAMES", "LLAMAFACTORY_K", "trainer_fragment"]
