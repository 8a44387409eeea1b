"""Command line interface ``countsdiff-sc`` over .h5ad files.

Subcommands: ``demo`` (the end-to-end job on the bundled data), ``train``, ``impute``, ``sample``, ``evaluate``,
``embed``. Every subcommand has ``--help``. Errors in the input (missing files, wrong layers or keys, data that
are not counts) end with a one-line message and exit code 1; usage errors exit with code 2.

``--threads`` (every subcommand) sets the CPU threads of torch and of the compiled sampler kernels; the default
``auto`` takes ``scvi.settings.num_threads`` or ``OMP_NUM_THREADS`` when set, else only the cores that are not busy
(see ``countsdiff_sc.settings``): two processes whose threads share cores were measured 10x slower, not 2x.

A device the machine does not have (``--accelerator gpu`` without a GPU) and numbers out of range (``--batch-size 0``)
are refused before any work, with a one-line message that names the option.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


class CLIError(Exception):
    """An input problem reported as one line and exit code 1."""


def _int_at_least(minimum: int):
    """An argparse type: an integer of at least ``minimum`` (a usage error, exit code 2, otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)


def _threads(text: str) -> int | str:
    """An argparse type for ``--threads``: ``auto`` or a positive integer."""
    return "auto" if text.strip().lower() == "auto" else _positive(text)


def _check_accelerator(accelerator: str) -> None:
    """Refuse ``--accelerator gpu`` on a machine without a GPU before any work (Lightning would raise deep inside)."""
    if accelerator not in ("gpu", "cuda", "mps"):
        return
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if (accelerator in ("gpu", "cuda") and torch.cuda.is_available()) or (accelerator in ("gpu", "mps") and has_mps):
        return
    raise CLIError(f"--accelerator {accelerator}, but this machine has no usable GPU (torch finds no CUDA or MPS "
                   "device); use --accelerator cpu, or --accelerator auto to use a GPU when there is one")


def _check_out(path: str, option: str = "--out") -> None:
    """Refuse an output path that is a directory before any work (the write would fail after it)."""
    if Path(path).is_dir():
        raise CLIError(f"{option} {path} is a directory; give a file name, e.g. {Path(path) / 'result.h5ad'}")


def _one_line(err: BaseException) -> str:
    """The message of an exception on one line (a KeyError's message without its quotes)."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else err
    text = " ".join(str(msg).split())
    return text or type(err).__name__


def _is_device_error(err: BaseException) -> bool:
    """Whether ``err`` is Lightning's refusal of a device or accelerator setting."""
    lightning_fabric = sys.modules.get("lightning.fabric.utilities.exceptions")
    return lightning_fabric is not None and isinstance(err, lightning_fabric.MisconfigurationException)


def _read(path: str):
    import anndata as ad

    p = Path(path)
    if not p.exists():
        raise CLIError(f"input file not found: {path}")
    try:
        return ad.read_h5ad(p)
    except Exception as err:
        raise CLIError(f"cannot read {path} as .h5ad: {err}") from err


def _write(adata, path: str) -> None:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(p, compression="gzip")
    except OSError as err:
        raise CLIError(f"cannot write {path}: {err}") from err
    print(f"wrote {p}")


def _load_model(path: str, accelerator: str, precision: str):
    from countsdiff_sc.model import CountsDiffModel

    _check_accelerator(accelerator)
    if not Path(path, "model.pt").exists():
        raise CLIError(f"no saved CountsDiff model in {path} (expected {path}/model.pt; create it with 'train')")
    model = CountsDiffModel.load(path, adata=None, accelerator=accelerator)
    if precision == "16" and model.device.type != "cuda":
        raise CLIError(f"--precision 16 needs a GPU, but the model runs on {model.device.type}; use --accelerator gpu "
                       "on a machine with a CUDA GPU, or --precision 32 / bf16")
    return model


def _cmd_demo(args: argparse.Namespace) -> None:
    from countsdiff_sc._demo import run_demo

    run_demo(out=args.out, max_steps=args.max_steps, n_samples=args.n_samples, n_steps=args.n_steps,
             seed=args.seed, quick=args.quick, progress=not args.quiet, num_threads=args.threads)


def _cmd_train(args: argparse.Namespace) -> None:
    import scvi

    from countsdiff_sc.model import CountsDiffModel

    target = Path(args.model)
    if target.exists() and not target.is_dir():
        raise CLIError(f"--model {args.model} is a file; give a directory for the saved model")
    if target.exists() and not args.overwrite:
        held = "already holds a saved model" if (target / "model.pt").exists() else "already exists"
        raise CLIError(f"{args.model} {held}; pass --overwrite to replace it, or another --model")
    _check_accelerator(args.accelerator)
    adata = _read(args.input)
    CountsDiffModel.setup_anndata(
        adata, layer=args.layer, labels_key=args.labels_key, categorical_covariate_keys=args.covariate_keys,
        valid_layer=args.valid_layer, mask_layer=args.mask_layer,
    )
    scvi.settings.seed = args.seed  # after the checks of setup_anndata: its log line would precede their errors
    model = CountsDiffModel(adata, backbone=args.backbone, schedule=args.schedule)
    model.train(max_epochs=args.max_epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                accelerator=args.accelerator, enable_progress_bar=not args.quiet)
    model.save(args.model, overwrite=args.overwrite)
    print(f"saved model to {args.model}")


def _cmd_impute(args: argparse.Namespace) -> None:
    _check_out(args.out)
    adata = _read(args.input)
    model = _load_model(args.model, args.accelerator, args.precision)
    model.impute(adata, mask_layer=args.mask_layer, target=args.target, n_samples=args.n_samples,
                 n_steps=args.n_steps, guidance=args.guidance, attrition=args.attrition, seed=args.seed,
                 key_added=args.key_added, store_samples=False if args.no_samples else "auto",
                 precision=args.precision, progress=not args.quiet)
    _write(adata, args.out)


def _cmd_sample(args: argparse.Namespace) -> None:
    _check_out(args.out)
    labels = None
    if args.labels is not None:
        labels = [lab for lab in args.labels.split(",") if lab]
        if not labels:
            raise CLIError(f"--labels {args.labels!r} names no label; give comma-separated labels, e.g. --labels B,T")
    model = _load_model(args.model, args.accelerator, args.precision)
    if labels is not None:
        if args.n is not None:
            labels = [labels[i % len(labels)] for i in range(args.n)]
    gen = model.sample(n_samples=args.n, labels=labels, n_steps=args.n_steps, guidance=args.guidance,
                       attrition=args.attrition, seed=args.seed, precision=args.precision,
                       progress=not args.quiet)
    _write(gen, args.out)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from countsdiff_sc import metrics

    if args.csv:
        _check_out(args.csv, "--csv")
    if args.out:
        _check_out(args.out)
    adata = _read(args.input)
    table = metrics.evaluate_imputation(adata, truth_layer=args.truth_layer, imputed_layer=args.imputed_layer,
                                        mask_layer=args.mask_layer, n_bootstrap=args.n_bootstrap, seed=args.seed)
    print(table.to_string(index=False))
    if args.csv:
        try:
            table.to_csv(args.csv, index=False)
        except OSError as err:
            raise CLIError(f"cannot write {args.csv}: {err}") from err
        print(f"wrote {args.csv}")
    if args.out:
        _write(adata, args.out)


def _noise_var(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}")
    return value


def _cmd_embed(args: argparse.Namespace) -> None:
    from countsdiff_sc.model import DICEModel as cls

    _check_out(args.out)
    adata = _read(args.input)
    if args.model and Path(args.model, "model.pt").exists():
        model = cls.load(args.model, adata=None, accelerator="cpu")
    else:
        cls.setup_anndata(adata, layer=args.layer, labels_key=args.labels_key)
        model = cls(adata, n_latent=args.n_latent)
        model.train(max_epochs=args.max_epochs, accelerator="cpu", enable_progress_bar=not args.quiet)
        if args.model:
            model.save(args.model, overwrite=True)
    model.embed(
        adata, n_iter=args.n_iter, n_chains=args.n_chains, seed=args.seed, noise_var=args.noise_var,
        progress=not args.quiet,
    )
    _write(adata, args.out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="countsdiff-sc",
        description="Count diffusion for single-cell RNA-seq: impute, generate and embed cells from .h5ad files.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, seed: bool = True) -> None:
        if seed:
            p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        p.add_argument("--quiet", action="store_true", help="no progress output")
        p.add_argument("--threads", type=_threads, default="auto",
                       help="CPU threads of torch and of the compiled sampler kernels (default auto: "
                       "scvi.settings.num_threads or OMP_NUM_THREADS when set, else the cores not busy now; "
                       "threads that share a core with another busy process run many times slower)")

    p = sub.add_parser("demo", help="train on the bundled CBMC data, impute, generate, print metrics, write .h5ad")
    p.add_argument("--out", default="countsdiff_demo.h5ad", help="output .h5ad (default countsdiff_demo.h5ad)")
    p.add_argument("--max-steps", type=_positive, default=3000, help="training steps (default 3000)")
    p.add_argument("--n-samples", type=_positive, default=5, help="imputation draws per cell (default 5)")
    p.add_argument("--n-steps", type=_positive, default=10,
                   help="reverse steps of the imputation (default 10 trapezoid steps, each run twice)")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (about a minute)")
    common(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a CountsDiff model on an .h5ad of raw counts")
    p.add_argument("input", help="input .h5ad with raw integer counts")
    p.add_argument("--model", required=True, help="output directory of the saved model")
    p.add_argument("--layer", help="layer holding the counts (default: X)")
    p.add_argument("--labels-key", help="obs column to condition on (e.g. cell_type)")
    p.add_argument("--covariate-keys", nargs="*", help="further categorical obs columns to condition on")
    p.add_argument("--valid-layer", help="boolean layer, False at suspected dropouts")
    p.add_argument("--backbone", choices=["mlp", "transformer"], default="mlp")
    p.add_argument("--schedule", choices=["cosine", "blackout", "blackout_discrete"], default="cosine")
    p.add_argument("--max-epochs", type=_positive, help="training epochs")
    p.add_argument("--max-steps", type=_positive, help="training steps")
    p.add_argument("--batch-size", type=_positive, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   help="device to train on (auto: a GPU when there is one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--mask-layer", help="boolean layer of held-out entries (True = held out): they never train")
    common(p)
    p.set_defaults(func=_cmd_train)

    def device_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                       help="device the model runs on (auto: a GPU when there is one)")
        p.add_argument("--precision", choices=["32", "bf16", "16"], default="32",
                       help="network precision (bf16 / 16 for GPUs; 16 needs one; default 32)")

    p = sub.add_parser("impute", help="fill suspected dropouts (or masked entries) of an .h5ad with a trained model")
    p.add_argument("input", help="input .h5ad with the model's genes (matched by name)")
    p.add_argument("--model", required=True, help="directory of a model saved by 'train'")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--mask-layer", help="boolean layer of the entries to fill (benchmark protocol); implies "
                   "--target mask")
    p.add_argument("--target", choices=["auto", "dropouts", "mask"], default="auto",
                   help="what to fill: the suspected dropouts of the model's validity layer, or the mask (auto: the "
                   "mask when one is given or registered, else the dropouts)")
    p.add_argument("--key-added", default="countsdiff_imputed")
    p.add_argument("--n-samples", type=_positive, default=5)
    p.add_argument("--n-steps", type=_positive, default=10,
                   help="reverse steps (default 10 trapezoid steps, each run twice: 40 network evaluations)")
    p.add_argument("--guidance", type=float, default=0.5)
    p.add_argument("--attrition", type=float, default=0.02)
    p.add_argument("--no-samples", action="store_true", help="do not store the draws in obsm")
    device_args(p)
    common(p)
    p.set_defaults(func=_cmd_impute)

    p = sub.add_parser("sample", help="generate cells with a trained model")
    p.add_argument("--model", required=True, help="directory of a model saved by 'train'")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--n", type=_positive, help="number of cells")
    p.add_argument("--labels", help="comma-separated labels, cycled to --n cells")
    p.add_argument("--n-steps", type=_positive, default=50)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--attrition", type=float, default=0.0)
    device_args(p)
    common(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("evaluate", help="score an imputation layer against the truth on the masked entries")
    p.add_argument("input", help="input .h5ad")
    p.add_argument("--imputed-layer", default="countsdiff_imputed")
    p.add_argument("--mask-layer", default="countsdiff_mask")
    p.add_argument("--truth-layer", help="layer with the true counts (default: X)")
    p.add_argument("--n-bootstrap", type=_non_negative, default=10)
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--out", help="write the .h5ad with the table in uns")
    common(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("embed", help="DICE embeddings (trains a DICE model unless --model holds one)")
    p.add_argument("input", help="input .h5ad with raw counts")
    p.add_argument("--out", required=True, help="output .h5ad (obsm X_dice, X_dice_std)")
    p.add_argument("--model", help="directory of a saved DICE model (loaded if present, else saved there)")
    p.add_argument("--layer", help="layer holding the counts (default: X)")
    p.add_argument("--labels-key", help="obs column of labels (mixup augmentation)")
    p.add_argument("--n-latent", type=_positive, help="number of PCs (default: elbow of the singular values)")
    p.add_argument("--max-epochs", type=_positive, default=200)
    p.add_argument("--n-iter", type=_positive, default=100)
    p.add_argument("--n-chains", type=_positive, default=10)
    p.add_argument(
        "--noise-var", type=_noise_var, default="auto",
        help="likelihood variance in the scaled gene space: a positive number, or 'auto' (default: the reference's "
        "probabilistic-PCA residual variance)",
    )
    common(p)
    p.set_defaults(func=_cmd_embed)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``countsdiff-sc`` console script; returns the exit code.

    Examples
    --------
    >>> main(["demo", "--quick", "--out", "demo.h5ad"])  # doctest: +SKIP
    0
    """
    args = _parser().parse_args(argv)
    from countsdiff_sc._settings import settings

    try:
        with settings.threads(args.threads) as n_threads:  # restored afterwards (main also runs in-process)
            args.threads = n_threads
            args.func(args)
    except (CLIError, ValueError, KeyError, TypeError, FileNotFoundError) as err:
        print(f"countsdiff-sc {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except Exception as err:
        if not _is_device_error(err):
            raise
        print(f"countsdiff-sc {args.command}: error: {_one_line(err)} (check --accelerator; --accelerator cpu "
              "always works)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
