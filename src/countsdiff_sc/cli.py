"""Command line interface ``countsdiff-sc`` over .h5ad files.

Subcommands: ``demo`` (the end-to-end job on the bundled data), ``train``, ``impute``, ``sample``, ``evaluate``,
``embed``. Every subcommand has ``--help``. Errors in the input (missing files, wrong layers or keys, data that
are not counts) end with a one-line message and exit code 1; usage errors exit with code 2.

Errors before work: every input a subcommand names is checked before scvi-tools and torch are imported (seconds
of start-up), so a mistake is reported at once. The input file is opened with h5py and only its keys are read (its
layers, obs columns and obsm keys, never the matrices): a missing file, a file that is not an .h5ad, a layer or column
it lacks, a model directory without ``model.pt``, an output path that is a directory or equal to the input
(refused unless ``--overwrite``), an output key the package does not own (``--key-added countsdiff_valid``) and
numbers out of range (``--batch-size 0``, ``--lr nan``, ``--guidance -1``) are all refused there. Whether the
data are counts and whether the genes match the model is checked by the verbs themselves, after the import.

``--threads`` (every subcommand) sets the CPU threads of torch and of the compiled sampler kernels; the default
``auto`` takes ``scvi.settings.num_threads`` or ``OMP_NUM_THREADS`` when set, else only the cores that are not busy
(see ``countsdiff_sc.settings``): two processes whose threads share cores were measured 10x slower, not 2x.

A device the machine does not have (``--accelerator gpu`` without a GPU) is refused before any work, with a one-line
message that names the option.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from countsdiff_sc import _keys

__all__ = ["main"]


#: Layers the package writes for its own purposes (and what they hold): an imputation written into one of them would
#: destroy it.
RESERVED_LAYERS = {_keys.VALID: "the validity marks of mark_dropouts", _keys.MASK: "the held-out mask",
                   _keys.CORRECTED: "the batch-corrected counts"}


class CLIError(Exception):
    """An input problem reported as one line and exit code 1."""


# ------------------------------------------------------------------------------------------------ argparse types
def _int_at_least(minimum: int) -> Callable[[str], int]:
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


def _number(minimum: float = 0.0, *, strict: bool = False, maximum: float = math.inf) -> Callable[[str], float]:
    """An argparse type: a finite number ``>= minimum`` (``> minimum`` when ``strict``) and ``<= maximum``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum) or value > maximum:
            bound = f"{'>' if strict else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum < math.inf else "")
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value

    return parse


def _threads(text: str) -> int | str:
    """An argparse type for ``--threads``: ``auto`` or a positive integer."""
    return "auto" if text.strip().lower() == "auto" else _positive(text)


def _noise_var(text: str) -> float | str:
    """An argparse type for ``--noise-var``: ``auto`` or a positive finite number."""
    return text if text == "auto" else _number(0.0, strict=True)(text)


# ------------------------------------------------------------------------------------------------ input checks
@dataclass
class H5adKeys:
    """What an .h5ad file holds, read from its keys only (no matrix is loaded): enough to check the names a command
    refers to before anything heavy is imported. A field is None when the file's layout does not tell it (an old
    anndata format); the check is then left to the reader."""

    path: str
    layers: set[str] = field(default_factory=set)
    obs: set[str] | None = None
    has_x: bool = True
    owned: set[str] = field(default_factory=set)

    @classmethod
    def read(cls, path: str) -> H5adKeys:
        import h5py

        p = Path(path)
        if not p.exists():
            raise CLIError(f"input file not found: {path}")
        if p.is_dir():
            raise CLIError(f"input {path} is a directory; give an .h5ad file")
        try:
            with h5py.File(p, "r") as f:
                out = cls(path=path, has_x="X" in f)
                if isinstance(f.get("layers"), h5py.Group):
                    out.layers = set(f["layers"].keys())
                obs = f.get("obs")
                if isinstance(obs, h5py.Group):
                    index = obs.attrs.get("_index", "_index")
                    out.obs = {k for k in obs.keys() if k not in (index, "__categories")}
                records = f.get("uns/countsdiff")
                if isinstance(records, h5py.Group):
                    out.owned = set(records.keys())
                    for rec in records.values():
                        if isinstance(rec, h5py.Group):
                            for name in ("key_added", "std_key", "samples_key"):
                                if isinstance(rec.get(name), h5py.Dataset) and rec[name].shape == ():
                                    value = rec[name][()]
                                    out.owned.add(value.decode() if isinstance(value, bytes) else str(value))
        except OSError as err:
            raise CLIError(f"cannot read {path} as .h5ad: {_one_line(err)}") from err
        return out

    def need_layer(self, layer: str | None, option: str, hint: str = "") -> None:
        """Refuse ``option`` naming a layer the file lacks (None means X, which must exist)."""
        if layer is None:
            if not self.has_x:
                raise CLIError(f"{self.path} has no X; name the layer that holds the counts with --layer")
            return
        if layer not in self.layers:
            raise CLIError(f"{option} {layer}: {self.path} has no layer {layer!r} (layers: "
                           f"{sorted(self.layers) or 'none'}){hint}")

    def need_obs(self, column: str | None, option: str) -> None:
        """Refuse ``option`` naming an obs column the file lacks."""
        if column is not None and self.obs is not None and column not in self.obs:
            raise CLIError(f"{option} {column}: {self.path} has no obs column {column!r} (columns: "
                           f"{sorted(self.obs) or 'none'})")


def _same_file(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return os.path.samefile(pa, pb)
    return pa.resolve() == pb.resolve()


def _check_out(path: str, option: str = "--out", *, inputs: Sequence[str] = (), overwrite: bool = True) -> None:
    """Refuse an output path that is a directory, or (without ``--overwrite``) the input file itself."""
    if Path(path).is_dir():
        raise CLIError(f"{option} {path} is a directory; give a file name, e.g. {Path(path) / 'result.h5ad'}")
    for source in inputs:
        if _same_file(path, source):
            if option == "--csv":
                raise CLIError(f"--csv {path} is the input file; give another file name for the table")
            if not overwrite:
                raise CLIError(f"{option} {path} is the input file; writing there would replace your data. Give "
                               "another --out, or pass --overwrite to replace the input on purpose")


def _check_model_dir(path: str, what: str = "CountsDiff") -> None:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"--model {path} does not exist; give the directory of a model saved by 'train'")
    if not (p / "model.pt").is_file():
        raise CLIError(f"no saved {what} model in {path} (expected {path}/model.pt; create it with "
                       f"'{'train' if what == 'CountsDiff' else 'embed --model'}')")


def _no_gpu_for_sure() -> bool:
    """True when this machine certainly has no GPU torch could use (decided without importing torch): Linux with
    neither NVIDIA device files nor WSL's GPU device."""
    return sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/dxg")


def _check_accelerator(accelerator: str, precision: str = "32") -> None:
    """Refuse ``--accelerator gpu`` (or ``--precision 16``) on a machine without a GPU before any work."""
    if precision == "16" and accelerator == "cpu":
        raise CLIError("--precision 16 needs a GPU, but --accelerator is cpu; use --precision 32 or bf16, or "
                       "--accelerator gpu on a machine with a CUDA GPU")
    if accelerator not in ("gpu", "cuda", "mps"):
        return
    message = (f"--accelerator {accelerator}, but this machine has no usable GPU (torch finds no CUDA or MPS device); "
               "use --accelerator cpu, or --accelerator auto to use a GPU when there is one")
    if _no_gpu_for_sure():
        raise CLIError(message)
    import torch

    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if not ((accelerator in ("gpu", "cuda") and torch.cuda.is_available()) or (accelerator in ("gpu", "mps")
                                                                               and has_mps)):
        raise CLIError(message)


def _check_key_added(key: str, keys: H5adKeys, mask_layer: str | None) -> None:
    """Refuse an output layer the imputation does not own: empty, a layer the package keeps for another purpose,
    the mask, or a layer of the input that countsdiff-sc did not write."""
    if not key:
        raise CLIError("--key-added is empty; give a layer name, e.g. --key-added countsdiff_imputed")
    if key in RESERVED_LAYERS or key == mask_layer:
        held = "the mask of --mask-layer" if key == mask_layer else RESERVED_LAYERS[key]
        raise CLIError(f"--key-added {key} names the layer that holds {held}; writing the imputation there would "
                       f"destroy it. Give another name, e.g. --key-added {_keys.IMPUTED}")
    for target in (key, _keys.std_key(key)):
        if target in keys.layers and target not in keys.owned:
            raise CLIError(f"--key-added {key}: {keys.path} already has a layer {target!r} that countsdiff-sc did "
                           "not write; refusing to replace it. Give another --key-added")


def _validate(args: argparse.Namespace) -> None:
    """Check every input of the command line without importing scvi-tools or torch (see the module docstring)."""
    command = args.command
    if command == "demo":
        _check_out(args.out)
    elif command == "train":
        keys = H5adKeys.read(args.input)
        keys.need_layer(args.layer, "--layer")
        for option, layer in (("--valid-layer", args.valid_layer), ("--mask-layer", args.mask_layer)):
            if layer is not None:
                keys.need_layer(layer, option)
        keys.need_obs(args.labels_key, "--labels-key")
        for column in args.covariate_keys or ():
            keys.need_obs(column, "--covariate-keys")
        if args.covariate_keys and len(set(args.covariate_keys)) < len(args.covariate_keys):
            raise CLIError(f"--covariate-keys names a column twice: {args.covariate_keys}")
        target = Path(args.model)
        if target.exists() and not target.is_dir():
            raise CLIError(f"--model {args.model} is a file; give a directory for the saved model")
        if target.exists() and not args.overwrite:
            held = "already holds a saved model" if (target / "model.pt").exists() else "already exists"
            raise CLIError(f"{args.model} {held}; pass --overwrite to replace it, or another --model")
        _check_accelerator(args.accelerator)
    elif command == "impute":
        _check_out(args.out, inputs=[args.input], overwrite=args.overwrite)
        keys = H5adKeys.read(args.input)
        if args.mask_layer is not None:
            keys.need_layer(args.mask_layer, "--mask-layer", " (create one with countsdiff_sc.pp.mask_mcar)")
        _check_key_added(args.key_added, keys, args.mask_layer)
        _check_accelerator(args.accelerator, args.precision)
        _check_model_dir(args.model)
    elif command == "sample":
        _check_out(args.out)
        if args.labels is not None and not [lab for lab in args.labels.split(",") if lab]:
            raise CLIError(f"--labels {args.labels!r} names no label; give comma-separated labels, e.g. --labels B,T")
        if args.labels is None and args.n is None:
            raise CLIError("give --n (the number of cells) or --labels (comma-separated labels, cycled to --n cells)")
        _check_accelerator(args.accelerator, args.precision)
        _check_model_dir(args.model)
    elif command == "evaluate":
        keys = H5adKeys.read(args.input)
        keys.need_layer(args.truth_layer, "--truth-layer")
        keys.need_layer(args.imputed_layer, "--imputed-layer", " (write one with 'impute')")
        keys.need_layer(args.mask_layer, "--mask-layer", " (create one with countsdiff_sc.pp.mask_mcar)")
        if args.csv:
            _check_out(args.csv, "--csv", inputs=[args.input])
        if args.out:
            _check_out(args.out, inputs=[args.input], overwrite=args.overwrite)
    elif command == "embed":
        _check_out(args.out, inputs=[args.input], overwrite=args.overwrite)
        keys = H5adKeys.read(args.input)
        if args.model and Path(args.model).exists() and not Path(args.model).is_dir():
            raise CLIError(f"--model {args.model} is a file; give a directory (a saved DICE model is loaded from it, "
                           "otherwise the trained one is saved there)")
        if not (args.model and Path(args.model, "model.pt").exists()):  # a loaded model uses its own settings
            keys.need_layer(args.layer, "--layer")
            keys.need_obs(args.labels_key, "--labels-key")


# ------------------------------------------------------------------------------------------------ helpers
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

    try:
        return ad.read_h5ad(Path(path))
    except Exception as err:
        raise CLIError(f"cannot read {path} as .h5ad: {_one_line(err)}") from err


def _write(adata, path: str) -> None:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(p, compression="gzip")
    except OSError as err:
        raise CLIError(f"cannot write {path}: {err}") from err
    print(f"wrote {p}")


def _sampler(args: argparse.Namespace):
    """The :class:`~countsdiff_sc.Sampler` of a sampling subcommand, from its options (the one place they are
    turned into settings)."""
    from countsdiff_sc.model import Sampler

    return Sampler(n_steps=args.n_steps, guidance=args.guidance, attrition=args.attrition, precision=args.precision,
                   seed=args.seed, progress=not args.quiet)


def _load_model(path: str, accelerator: str, precision: str):
    from countsdiff_sc.model import CountsDiffModel

    model = CountsDiffModel.load(path, adata=None, accelerator=accelerator)
    if precision == "16" and model.device.type != "cuda":
        raise CLIError(f"--precision 16 needs a GPU, but the model runs on {model.device.type}; use --accelerator gpu "
                       "on a machine with a CUDA GPU, or --precision 32 / bf16")
    return model


# ------------------------------------------------------------------------------------------------ commands
def _cmd_demo(args: argparse.Namespace) -> None:
    from countsdiff_sc._demo import run_demo

    run_demo(out=args.out, max_steps=args.max_steps, n_samples=args.n_samples, n_steps=args.n_steps,
             seed=args.seed, quick=args.quick, progress=not args.quiet, num_threads=args.threads)


def _cmd_train(args: argparse.Namespace) -> None:
    import scvi

    from countsdiff_sc.model import CountsDiffModel

    adata = _read(args.input)
    CountsDiffModel.setup_anndata(
        adata, layer=args.layer, labels_key=args.labels_key, categorical_covariate_keys=args.covariate_keys,
        valid_layer=args.valid_layer, mask_layer=args.mask_layer,
    )
    scvi.settings.seed = args.seed  # after the checks of setup_anndata: its log line would precede their errors
    model = CountsDiffModel(adata, backbone=args.backbone, schedule=args.schedule)
    model.train(max_epochs=args.max_epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                accelerator=args.accelerator, enable_progress_bar=not args.quiet, plan_kwargs={"lr": args.lr})
    model.save(args.model, overwrite=args.overwrite)
    print(f"saved model to {args.model}")


def _cmd_impute(args: argparse.Namespace) -> None:
    adata = _read(args.input)
    model = _load_model(args.model, args.accelerator, args.precision)
    model.impute(adata, mask_layer=args.mask_layer, target=args.target, n_samples=args.n_samples,
                 sampler=_sampler(args), key_added=args.key_added,
                 store_samples=False if args.no_samples else "auto",
                 std_key=_keys.std_key(args.key_added) if args.keep_spread else "auto")
    _write(adata, args.out)


def _cmd_sample(args: argparse.Namespace) -> None:
    labels = None
    if args.labels is not None:
        labels = [lab for lab in args.labels.split(",") if lab]
        if args.n is not None:
            labels = [labels[i % len(labels)] for i in range(args.n)]
    model = _load_model(args.model, args.accelerator, args.precision)
    gen = model.sample(n_cells=args.n, labels=labels, sampler=_sampler(args))
    _write(gen, args.out)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from countsdiff_sc import metrics

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


def _cmd_embed(args: argparse.Namespace) -> None:
    from countsdiff_sc.model import DICEModel as cls

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


# ------------------------------------------------------------------------------------------------ parser
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="countsdiff-sc",
        description="Count diffusion for single-cell RNA-seq: impute, generate and embed cells from .h5ad files.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seed", type=_non_negative, default=0, help="random seed, a non-negative integer (default 0)")
        p.add_argument("--quiet", action="store_true", help="no progress output")
        p.add_argument("--threads", type=_threads, default="auto",
                       help="CPU threads of torch and of the compiled sampler kernels (default auto: "
                       "scvi.settings.num_threads or OMP_NUM_THREADS when set, else the cores not busy now; "
                       "threads that share a core with another busy process run many times slower)")

    def overwrite(p: argparse.ArgumentParser) -> None:
        p.add_argument("--overwrite", action="store_true",
                       help="allow --out to be the input file (replacing it); refused otherwise")

    def sampler_args(p: argparse.ArgumentParser, verb: str) -> None:
        where = f"default: {verb}'s default for the model's preset, see the docs' table of defaults"
        p.add_argument("--n-steps", type=_positive, default=None, help=f"reverse steps ({where})")
        p.add_argument("--guidance", type=_number(0.0), default=None,
                       help=f"classifier-free guidance strength, >= 0 ({where}; 0: ignore the labels)")
        p.add_argument("--attrition", type=_number(0.0, maximum=1.0), default=None,
                       help=f"attrition strength in [0, 1] ({where})")
        p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                       help="device the model runs on (auto: a GPU when there is one)")
        p.add_argument("--precision", choices=["32", "bf16", "16"], default="32",
                       help="network precision (bf16 / 16 for GPUs; 16 needs one; default 32)")

    p = sub.add_parser("demo", help="train on the bundled CBMC data, impute, generate, print metrics, write .h5ad")
    demo_out = f"{_keys.DEMO_PREFIX}.h5ad"
    p.add_argument("--out", default=demo_out, help=f"output .h5ad (default {demo_out})")
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
    p.add_argument("--lr", type=_number(0.0, strict=True), default=1e-3, help="learning rate, > 0 (default 1e-3)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   help="device to train on (auto: a GPU when there is one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--mask-layer", help="boolean layer of held-out entries (True = held out): they never train")
    common(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("impute", help="fill suspected dropouts (or masked entries) of an .h5ad with a trained model")
    p.add_argument("input", help="input .h5ad with the model's genes (matched by name)")
    p.add_argument("--model", required=True, help="directory of a model saved by 'train'")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--mask-layer", help="boolean layer of the entries to fill (benchmark protocol); implies "
                   "--target mask")
    p.add_argument("--target", choices=["auto", "denoise", "dropouts", "mask"], default="auto",
                   help="what to fill: every entry by depth restoration (denoise), the suspected dropouts of the "
                   "model's validity layer, or the mask (auto: the mask when one is given or registered, else "
                   "impute's default)")
    p.add_argument("--key-added", default=_keys.IMPUTED,
                   help=f"layer of the imputation (default {_keys.IMPUTED}); a layer countsdiff-sc did not write, or "
                   "one that holds its validity marks or mask, is refused")
    p.add_argument("--n-samples", type=_positive, default=5)
    p.add_argument("--no-samples", action="store_true", help="do not store the draws in obsm")
    p.add_argument("--keep-spread", action="store_true",
                   help="store the spread layer (<key-added>_std) whatever its size (by default a dense spread of "
                        "more than 2^20 entries is not stored)")
    sampler_args(p, "impute")
    overwrite(p)
    common(p)
    p.set_defaults(func=_cmd_impute)

    p = sub.add_parser("sample", help="generate cells with a trained model")
    p.add_argument("--model", required=True, help="directory of a model saved by 'train'")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--n", type=_positive, help="number of cells")
    p.add_argument("--labels", help="comma-separated labels, cycled to --n cells")
    sampler_args(p, "sample")
    common(p)
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("evaluate", help="score an imputation layer against the truth on the masked entries")
    p.add_argument("input", help="input .h5ad")
    p.add_argument("--imputed-layer", default=_keys.IMPUTED)
    p.add_argument("--mask-layer", default=_keys.MASK)
    p.add_argument("--truth-layer", help="layer with the true counts (default: X)")
    p.add_argument("--n-bootstrap", type=_non_negative, default=10)
    p.add_argument("--csv", help="also write the table to this CSV file")
    p.add_argument("--out", help="write the .h5ad with the table in uns")
    overwrite(p)
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
    overwrite(p)
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
    try:
        _validate(args)  # before scvi-tools / torch are imported: input errors are reported at once
        from countsdiff_sc._settings import settings

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
