#!/usr/bin/env bash
# GPU check of countsdiff-sc: on a machine with a CUDA GPU, train a model on CBMC, then `sample` and `impute` in fp32
# and bf16 and `python -m benchmarks.perf --quick --device cuda`, in under 8 minutes, and write benchmarks/results/gpu_check.md.
# Exit code: 0 when every step passed (or when there is no CUDA GPU, or in CI: it then runs nothing), 1 when a step
# failed, 2 for a setup problem (a venv whose torch cannot see the GPU, a failed install).
#
#   bash benchmarks/gpu_check.sh                     # venv .venv-gpu (created on first use: pip install torch -e .)
#   bash benchmarks/gpu_check.sh --venv .venv        # an existing environment with a CUDA build of torch
#   bash benchmarks/gpu_check.sh --out /tmp/gpu.md   # results elsewhere
#   bash benchmarks/gpu_check.sh --rehearse --venv .venv --out /tmp/r.md   # on a CPU: checks this script, not a GPU
#
# Creating the venv needs the internet (PyPI's Linux torch wheels bundle CUDA); on an offline machine pass --venv.
# Never run in CI: a CI machine has no GPU, and this check is for whoever has one.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/.venv-gpu
OUT=$ROOT/benchmarks/results/gpu_check.md
STEPS=3000          # training steps (the demo's); the whole check stays under 8 minutes on a current GPU
REHEARSE=0          # --rehearse: the same steps on the CPU with tiny sizes and no perf.py (tests the script itself)
while [ $# -gt 0 ]; do
  case $1 in
    --venv) VENV=$(cd "$2" 2>/dev/null && pwd || echo "$2"); shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --rehearse) REHEARSE=1; STEPS=20; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -n "${CI:-}" ]; then
  echo "gpu_check.sh: CI is set; this check is for machines with a GPU and never runs in CI. Nothing done."
  exit 0
fi

has_gpu() {
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then return 0; fi
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c \
    'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}
if [ $REHEARSE = 0 ] && ! has_gpu; then
  echo "gpu_check.sh: no CUDA GPU on this machine (nvidia-smi lists none$([ -x "$VENV/bin/python" ] && echo ", and" \
    "the torch of $VENV sees none")), so there is nothing to check here. Run it on a machine with an NVIDIA GPU; the"
  echo "CPU path is covered by the test suite. Nothing done."
  exit 0
fi
ACCEL=gpu; N_CELLS=0; N_GEN=3000
[ $REHEARSE = 1 ] && { ACCEL=cpu; N_CELLS=400; N_GEN=60; echo "== rehearsal on the CPU: tiny sizes, no perf.py"; }

PY=$VENV/bin/python
if [ ! -x "$PY" ]; then
  echo "== creating $VENV (torch from PyPI with its bundled CUDA, and countsdiff-sc from $ROOT)"
  python3 -m venv "$VENV" && "$PY" -m pip install -q --upgrade pip && "$PY" -m pip install -q torch \
    && "$PY" -m pip install -q -e "$ROOT" || { echo "gpu_check.sh: installing into $VENV failed" >&2; exit 2; }
elif ! "$PY" -c 'import countsdiff_sc' >/dev/null 2>&1; then
  "$PY" -m pip install -q -e "$ROOT" || { echo "gpu_check.sh: installing countsdiff-sc into $VENV failed" >&2; exit 2; }
fi
if [ $REHEARSE = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check.sh: this machine has a GPU, but the torch of $VENV cannot use it ($("$PY" -c \
    'import torch; print(torch.__version__)' 2>&1)). Install a CUDA build of torch there (pytorch.org), or pass" \
    "--venv with one." >&2
  exit 2
fi
CLI=("$PY" -m countsdiff_sc)

WORK=$(mktemp -d -t cds_gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK" || exit 2
START=$(date +%s)
FAILED=0
ROWS=()

step() {  # step NAME TIMEOUT_S COMMAND...: run, time, record; a failure marks the check failed and goes on
  local name=$1 limit=$2; shift 2
  local t0 status=ok rc
  t0=$(date +%s)
  echo "== $name"
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    status="FAILED (exit $rc$([ $rc = 124 ] && echo ": over its ${limit} s"))"
    FAILED=1
    tail -n 20 "$WORK/$name.log" | sed 's/^/    /'
  fi
  local dt=$(( $(date +%s) - t0 ))
  echo "   $status, ${dt} s"
  ROWS+=("| $name | $dt | $status |")
}

VERSIONS=$("$PY" - <<'EOF'
import platform, torch, countsdiff_sc, scvi, lightning
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"- GPU: {torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB), {torch.cuda.device_count()} "
          f"device(s); bf16 supported: {torch.cuda.is_bf16_supported()}")
else:
    print("- no GPU: a rehearsal of the script on the CPU, not a GPU check")
print(f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
      f"lightning {lightning.__version__}, scvi-tools {scvi.__version__}, countsdiff-sc {countsdiff_sc.__version__}; "
      f"Python {platform.python_version()}")
EOF
)
echo "$VERSIONS"
DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)

step prepare_data 120 env N_CELLS="$N_CELLS" "$PY" - <<'EOF'
import os
import countsdiff_sc as cds
adata = cds.datasets.cbmc()
if int(os.environ["N_CELLS"]):  # the rehearsal's subset
    adata = adata[: int(os.environ["N_CELLS"])].copy()
cds.pp.mark_dropouts(adata, groupby="cell_type")
cds.pp.mask_mcar(adata, rate=0.5, seed=0)
adata.write_h5ad("cbmc.h5ad")
top = adata.obs["cell_type"].value_counts().index[:3]
open("labels.txt", "w").write(",".join(top))
print(adata)
EOF
LABELS=$(cat labels.txt 2>/dev/null || echo "")

step train 240 "${CLI[@]}" train cbmc.h5ad --model model --labels-key cell_type --valid-layer countsdiff_valid \
  --mask-layer countsdiff_mask --max-steps "$STEPS" --accelerator "$ACCEL" --quiet
for precision in 32 bf16; do
  step "impute_$precision" 120 "${CLI[@]}" impute cbmc.h5ad --model model --mask-layer countsdiff_mask \
    --n-samples 5 --accelerator "$ACCEL" --precision "$precision" --out "imputed_$precision.h5ad" --quiet
  step "sample_$precision" 120 "${CLI[@]}" sample --model model --labels "$LABELS" --n "$N_GEN" --accelerator "$ACCEL" \
    --precision "$precision" --out "generated_$precision.h5ad" --quiet
done

step check_results 120 env ACCEL="$ACCEL" "$PY" - <<'EOF'
# quality of each precision, and the sanity checks that fail the step: finite imputations, integer counts, bf16 close
import os, sys, warnings
import anndata as ad
import numpy as np
import countsdiff_sc as cds

warnings.simplefilter("ignore")
real = ad.read_h5ad("cbmc.h5ad")
lines, problems, rmse = ["| precision | RMSE (held out) | bias | Spearman | generated / real counts per cell | "
                         "zeros generated / real |", "|---|---|---|---|---|---|"], [], {}
for p in ("32", "bf16"):
    imp = ad.read_h5ad(f"imputed_{p}.h5ad")
    x = imp.layers["countsdiff_imputed"]
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    if not np.isfinite(x).all():
        problems.append(f"{p}: non-finite imputed values")
    table = cds.metrics.evaluate_imputation(imp, n_bootstrap=0, metrics=["rmse", "bias", "spearman"])
    m = dict(zip(table["metric"], table["value"]))
    rmse[p] = m["rmse"]
    gen = ad.read_h5ad(f"generated_{p}.h5ad")
    g = gen.X.toarray()
    if (g < 0).any() or not np.array_equal(g, np.round(g)):
        problems.append(f"{p}: generated values that are not counts")
    same = real[real.obs["cell_type"].astype(str).isin(set(gen.obs["cell_type"].astype(str)))]
    r = same.X.toarray() if hasattr(same.X, "toarray") else np.asarray(same.X)
    lines.append(f"| {p} | {m['rmse']:.3f} | {m['bias']:.3f} | {m['spearman']:.3f} | "
                 f"{g.sum(1).mean() / r.sum(1).mean():.3f} | {(g == 0).mean():.3f} / {(r == 0).mean():.3f} |")
if abs(rmse["bf16"] / rmse["32"] - 1) > 0.1 and os.environ["ACCEL"] == "gpu":
    problems.append(f"bf16 RMSE {rmse['bf16']:.3f} differs from fp32 {rmse['32']:.3f} by more than 10%")
open("quality.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
if problems:
    print("problems: " + "; ".join(problems))
    sys.exit(1)
EOF

[ $REHEARSE = 0 ] && step perf_cuda 300 env -C "$ROOT" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
  "$PY" -m benchmarks.perf --quick --device cuda --timeout 120

TOTAL=$(( $(date +%s) - START ))
[ "$TOTAL" -gt 480 ] && { echo "== the check took $TOTAL s, over its 8-minute budget"; FAILED=1; }
mkdir -p "$(dirname "$OUT")"
{
  echo "# GPU check$([ $REHEARSE = 1 ] && echo " (rehearsal on the CPU: checks the script, not a GPU)")"
  echo
  echo "Generated by \`bash benchmarks/gpu_check.sh\` on $(hostname) at $(date -u '+%Y-%m-%d %H:%M UTC'), commit" \
       "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown); total $TOTAL s;" \
       "result: $([ $FAILED = 0 ] && echo PASSED || echo FAILED)."
  echo
  echo "$VERSIONS"
  echo "- NVIDIA driver ${DRIVER:-unknown}"
  echo "- data: bundled CBMC ($([ "$N_CELLS" = 0 ] && echo "8,617" || echo "the first $N_CELLS") cells x 500 genes)," \
       "dropouts marked per cell type, 50% MCAR mask (held-out entries never train); model: default MLP, $STEPS" \
       "steps (--accelerator $ACCEL); impute: 5 draws, 50 steps; sample: $N_GEN cells of the three largest cell" \
       "types, 50 steps, guidance 1"
  echo
  echo "| step | seconds | status |"
  echo "|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  [ -f quality.md ] && { echo "## Quality by precision"; echo; cat quality.md; echo; }
  [ $REHEARSE = 0 ] && echo "Throughput and memory: \`benchmarks/results/quick/perf_cuda_32.md\` (written by the" \
    "perf_cuda step)."
} >"$OUT"
echo "wrote $OUT"
exit $FAILED
