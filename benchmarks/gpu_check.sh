#!/usr/bin/env bash
# The whole GPU check in one script: under 8 minutes of GPU time, every result as JSON under one folder.
#
#   bash benchmarks/gpu_check.sh [--tiny] [--out DIR] [--python PY] [--prompts N] [--steps a,b,...]
#
# Steps, in order (each with its own `timeout`; a failed or timed-out step is recorded and the next runs):
#   device              device.json: device, driver (nvidia-smi), torch, diffusers, CUDA, measured matmul TFLOP/s
#   cuda_tests          cuda_tests.json (+ cuda_tests.xml): the tests marked `cuda` or skipped without CUDA
#   iteration_lora      iteration_lora.json: benchmarks/gpu_iteration.py at the SD3.5-Medium shape (bf16,
#                       512 px, NFE 10, 27 images per prompt): TreeGRPO k=3 d=3 and the Flow-GRPO, DanceGRPO,
#                       MixGRPO and BranchGRPO recipes, LoRA, eager
#   iteration_full      iteration_full.json: TreeGRPO and DanceGRPO, full fine-tuning (an out-of-memory row
#                       says so)
#   iteration_compiled  iteration_compiled.json: TreeGRPO, LoRA, torch.compile
#   onpolicy            onpolicy.json (+ .md): onpolicy/max_deviation, ratio_std, clipped_fraction on this
#                       device's own kernels in fp32 and bf16 (benchmarks/onpolicy_numerics.py --real)
#   flux                flux.json: FLUX.1-dev-shaped TreeGRPO (k=2, d=3) and DanceGRPO, 8 images per prompt at
#                       NFE 6, LoRA bf16
# steps.json lists every step with its status (ok, failed, timeout, skipped), exit code, seconds, budget
# and the reason of a skip; it is rewritten after each step, so a run cut short keeps what finished.
# logs/<step>.log keeps each step's output.
#
# --tiny runs every step at CPU sizes (tiny random transformers) so the script runs end to end on a CPU.
# Without --tiny and without CUDA the GPU steps are skipped. --prompts sets the prompts per iteration
# of the SD3.5-M steps (default 2, what fits the 8 minutes; each method halves them on CUDA out of
# memory); --prompts 32 is the full-size run and takes far longer than 8 minutes.
# The transformers are random weights of the real configurations (no download).
# GPU_CHECK_FAIL=step1,step2 makes those steps fail (for the tests).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TINY=0
OUT=""
PY=""
PROMPTS=""
ONLY=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tiny) TINY=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --prompts) PROMPTS="$2"; shift 2 ;;
        --steps) ONLY="$2"; shift 2 ;;
        -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (--help lists them)" >&2; exit 2 ;;
    esac
done
if [[ -z "$PY" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY="python3"; fi
fi
if [[ -z "$OUT" ]]; then
    if [[ $TINY == 1 ]]; then OUT="$ROOT/benchmarks/results/gpu_check_tiny"; else OUT="$ROOT/benchmarks/results/gpu_check"; fi
fi
mkdir -p "$OUT/logs" "$OUT/.skip"
OUT="$(cd "$OUT" && pwd)"
rm -f "$OUT"/.skip/* "$OUT/steps.json"
cd "$ROOT" || exit 2
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

ALL_STEPS=(device cuda_tests iteration_lora iteration_full iteration_compiled onpolicy flux)
# Seconds of each step on a GPU: 470 in all, under the 8 minutes (estimates from the predicted H100 pass
# times, benchmarks/results/predicted_floor.json; tune them after the first GPU run); on a CPU (--tiny)
# generous ones.
declare -A GPU_BUDGET=([device]=15 [cuda_tests]=30 [iteration_lora]=150 [iteration_full]=60
                       [iteration_compiled]=95 [onpolicy]=55 [flux]=65)
CPU_BUDGET=600
STEP_RECORDS=()
STARTED=$(date +%s)
CUDA=0

json_string() {  # a JSON string literal of $1
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/ }
    s=${s//$'\t'/ }
    printf '"%s"' "$s"
}

write_status() {
    local complete=$1 body="" record
    for record in "${STEP_RECORDS[@]}"; do body+="${body:+,}"$'\n    '"$record"; done
    {
        printf '{\n  "tiny": %s,\n  "cuda": %s,\n  "complete": %s,\n' \
            "$([[ $TINY == 1 ]] && echo true || echo false)" "$([[ $CUDA == 1 ]] && echo true || echo false)" "$complete"
        printf '  "python": %s,\n  "out": %s,\n  "seconds": %s,\n' "$(json_string "$PY")" "$(json_string "$OUT")" \
            "$(( $(date +%s) - STARTED ))"
        printf '  "gpu_budget_s": %s,\n  "steps": [%s\n  ]\n}\n' "$GPU_TOTAL" "$body"
    } > "$OUT/steps.json.tmp" && mv "$OUT/steps.json.tmp" "$OUT/steps.json"
}

GPU_TOTAL=0
for name in "${ALL_STEPS[@]}"; do GPU_TOTAL=$(( GPU_TOTAL + GPU_BUDGET[$name] )); done

wanted() { [[ -z "$ONLY" || ",$ONLY," == *",$1,"* ]]; }

record() {  # name status rc seconds budget reason
    STEP_RECORDS+=("{\"step\": \"$1\", \"status\": \"$2\", \"exit_code\": $3, \"seconds\": $4, \"budget_s\": $5, \"reason\": $(json_string "$6")}")
    write_status false
    echo "== $1: $2${6:+ ($6)} in ${4}s"
}

# run_step NAME COMMAND...: run under the step's budget; a step may write $OUT/.skip/NAME (the reason) to say it skipped
run_step() {
    local name=$1; shift
    wanted "$name" || return 0
    local budget=$CPU_BUDGET
    [[ $TINY == 1 ]] || budget=${GPU_BUDGET[$name]}
    local log="$OUT/logs/$name.log" start rc status reason=""
    echo "== $name (budget ${budget}s)"
    start=$(date +%s)
    if [[ ",${GPU_CHECK_FAIL:-}," == *",$name,"* ]]; then
        echo "failed on purpose: GPU_CHECK_FAIL=$GPU_CHECK_FAIL" > "$log"
        rc=3
    else
        timeout --kill-after=5 "$budget" "$@" > "$log" 2>&1
        rc=$?
    fi
    local seconds=$(( $(date +%s) - start ))
    if [[ $rc == 0 && -f "$OUT/.skip/$name" ]]; then
        status=skipped; reason="$(cat "$OUT/.skip/$name")"
    elif [[ $rc == 0 ]]; then
        status=ok
    elif [[ $rc == 124 || $rc == 137 ]]; then
        status=timeout; reason="ran past its ${budget}s budget"
    else
        # a benchmark names its failed rows ("<method> (<mode>): failed: ..."); else the log's last line
        local why
        why="$(grep -m 3 -E ': failed: ' "$log" 2>/dev/null | tr '\n' ';' | cut -c1-300)"
        [[ -n "$why" ]] || why="$(tail -n 1 "$log" 2>/dev/null | cut -c1-300)"
        status=failed; reason="exit code $rc: $why"
    fi
    record "$name" "$status" "$rc" "$seconds" "$budget" "$reason"
    tail -n 3 "$log" | sed 's/^/   /'
}

skip_step() {  # name reason
    wanted "$1" || return 0
    local budget=$CPU_BUDGET
    [[ $TINY == 1 ]] || budget=${GPU_BUDGET[$1]}
    record "$1" skipped 0 0 "$budget" "$2"
}

# ---------------------------------------------------------------- 1. the device
run_step device "$PY" - "$OUT" <<'EOF'
import json, platform, subprocess, sys, time
from pathlib import Path

import torch

out = Path(sys.argv[1])
cuda = torch.cuda.is_available()
facts = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "cuda": cuda,
         "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
         "torch": torch.__version__, "torch_cuda": torch.version.cuda, "torch_threads": torch.get_num_threads()}
try:
    import diffusers
    facts["diffusers"] = diffusers.__version__
except ImportError:
    facts["diffusers"] = None
facts["driver"] = None
try:
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=15)
    if smi.returncode == 0 and smi.stdout.strip():
        name, driver, memory = (part.strip() for part in smi.stdout.splitlines()[0].split(","))
        facts.update(driver=driver, nvidia_smi_name=name, memory_total=memory)
except (OSError, subprocess.SubprocessError):
    pass
if cuda:
    facts["memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    facts["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))


def matmul_tflops(dtype, n, device, seconds=2.0):
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    if cuda:
        torch.cuda.synchronize()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        calls += 10
        if cuda:
            torch.cuda.synchronize()
    return 2 * n**3 * calls / (time.perf_counter() - start) / 1e12


device = "cuda" if cuda else "cpu"
n = 8192 if cuda else 512
facts["matmul_size"] = n
facts["matmul_tflops"] = {"bf16": matmul_tflops(torch.bfloat16, n, device),
                          "fp32": matmul_tflops(torch.float32, n, device, seconds=1.0)}
facts["peak_tflops"] = facts["matmul_tflops"]["bf16"]  # the MFU ceiling the iteration steps use
(out / "device.json").write_text(json.dumps(facts, indent=2) + "\n")
print(json.dumps(facts, indent=2))
EOF

if [[ -f "$OUT/device.json" ]] && grep -q '"cuda": true' "$OUT/device.json"; then
    CUDA=1
elif [[ ! -f "$OUT/device.json" ]]; then
    # the device step failed: ask torch directly
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" > /dev/null 2>&1 && CUDA=1
fi
PEAK=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['peak_tflops'])" "$OUT/device.json" 2>/dev/null)
PEAK_ARGS=()
[[ -n "$PEAK" ]] && PEAK_ARGS=(--peak-tflops "$PEAK")
write_status false

# ---------------------------------------------------------------- 2. the CUDA-only tests
CUDA_TEST_FILES=()
while IFS= read -r file; do CUDA_TEST_FILES+=("$file"); done < <(grep -rlE "mark\.cuda|cuda\.is_available" tests --include='test_*.py' | sort)
PLUGIN_DIR="$(mktemp -d)"
cat > "$PLUGIN_DIR/gpu_check_cuda_only.py" <<'EOF'
"""Keep only the tests marked `cuda` or skipped without CUDA; write their outcomes as JSON."""
import json
import os
from pathlib import Path

import torch

OUT = Path(os.environ["GPU_CHECK_OUT"])
RESULTS = {}


def cuda_only(item):
    if item.get_closest_marker("cuda"):
        return True
    for marker in item.iter_markers("skipif"):
        reason = str(marker.kwargs.get("reason", "")) + " ".join(map(str, marker.args))
        if "cuda" in reason.lower():
            return True
    return False


def pytest_collection_modifyitems(config, items):
    keep = [item for item in items if cuda_only(item)]
    config.hook.pytest_deselected(items=[item for item in items if item not in keep])
    items[:] = keep


def pytest_runtest_logreport(report):
    if report.when == "call" or report.outcome != "passed":
        reason = report.longrepr[2] if report.skipped and isinstance(report.longrepr, tuple) else None
        if report.failed:
            reason = str(report.longrepr).splitlines()[-1][:300] if report.longrepr else "failed"
        RESULTS[report.nodeid] = {"outcome": report.outcome, "reason": reason, "seconds": report.duration}


def pytest_sessionfinish(session, exitstatus):
    tests = [{"test": nodeid, **result} for nodeid, result in RESULTS.items()]
    counts = {outcome: sum(t["outcome"] == outcome for t in tests) for outcome in ("passed", "failed", "skipped")}
    cuda = torch.cuda.is_available()
    (OUT / "cuda_tests.json").write_text(json.dumps(
        {"cuda": cuda, "selected": len(tests), **counts, "exit_status": int(exitstatus), "tests": tests}, indent=2) + "\n")
    if not cuda:
        (OUT / ".skip" / "cuda_tests").write_text(
            f"no CUDA device: the {len(tests)} CUDA-only tests were collected and skipped")
    elif not tests:
        (OUT / ".skip" / "cuda_tests").write_text("no test is marked cuda or skipped without CUDA")
    if exitstatus == 5:  # nothing selected is not a failure: the skip file says so
        session.exitstatus = 0
EOF
if [[ ${#CUDA_TEST_FILES[@]} == 0 ]]; then
    skip_step cuda_tests "no test file mentions CUDA"
else
    run_step cuda_tests env GPU_CHECK_OUT="$OUT" PYTHONPATH="$PLUGIN_DIR:$PYTHONPATH" TREEGRPO_GPU_NUMERICS=off \
        "$PY" -m pytest -p gpu_check_cuda_only -p no:cacheprovider -q "${CUDA_TEST_FILES[@]}" \
        --junitxml="$OUT/cuda_tests.xml"
fi
rm -rf "$PLUGIN_DIR"

# ---------------------------------------------------------------- 3-5. iterations, on-policy statistics, FLUX
ITERATION=("$PY" benchmarks/gpu_iteration.py)
if [[ $TINY == 1 ]]; then
    # CPU sizes: tiny random transformers, 8 images per prompt (TreeGRPO k=2, d=3), NFE 6; compile
    # through aot_eager (inductor would compile C++ for minutes on a small CPU)
    DEVICE=cpu
    SD=(--size tiny --device cpu --steps 6 --images-per-prompt 8 --prompts "${PROMPTS:-2}" --max-batch 8
        --minibatch 4 --iterations 1 --precision fp32)
    TREE="treegrpo k2 d3"
    COMPILE=(--compile --compile-backend aot_eager)
    FLUX=(--size flux-tiny --device cpu --steps 4 --images-per-prompt 8 --prompts 1 --max-batch 8 --minibatch 4
          --iterations 1 --precision fp32)
    ONPOLICY=(--real-size tiny --device cpu --iterations 1)
else
    # SD3.5-Medium: bf16, 512 px, NFE 10, 27 images per prompt; one warm-up and one timed iteration
    DEVICE=cuda
    SD=(--size sd35m --device cuda --steps 10 --images-per-prompt 27 --prompts "${PROMPTS:-2}" --iterations 1
        --precision bf16 --pass-repeats 2)
    TREE="treegrpo k3 d3"
    COMPILE=(--compile)
    # FLUX.1-dev (12 B) at the size that fits the budget: one prompt of 8 images (TreeGRPO k=2, d=3) at NFE 6
    FLUX=(--size flux-dev --device cuda --steps 6 --images-per-prompt 8 --prompts 1 --iterations 1 --precision bf16
          --pass-repeats 2)
    ONPOLICY=(--real-size sd35m --device cuda --iterations 2)
fi
FLUX_TREE="treegrpo k2 d3"

if [[ $TINY == 0 && $CUDA == 0 ]]; then
    for name in iteration_lora iteration_full iteration_compiled onpolicy flux; do
        skip_step "$name" "no CUDA device: the real sizes need a GPU (--tiny runs the CPU sizes)"
    done
else
    run_step iteration_lora "${ITERATION[@]}" "${SD[@]}" --modes lora "${PEAK_ARGS[@]}" \
        --methods "$TREE" flow_grpo dance_grpo mix_grpo branch_grpo --out "$OUT/iteration_lora.json"
    run_step iteration_full "${ITERATION[@]}" "${SD[@]}" --modes full "${PEAK_ARGS[@]}" \
        --methods "$TREE" dance_grpo --out "$OUT/iteration_full.json"
    run_step iteration_compiled "${ITERATION[@]}" "${SD[@]}" --modes lora "${PEAK_ARGS[@]}" "${COMPILE[@]}" \
        --methods "$TREE" --out "$OUT/iteration_compiled.json"
    run_step onpolicy "$PY" benchmarks/onpolicy_numerics.py --problems --real "${ONPOLICY[@]}" --out "$OUT/onpolicy.json"
    run_step flux "${ITERATION[@]}" "${FLUX[@]}" --modes lora "${PEAK_ARGS[@]}" \
        --methods "$FLUX_TREE" dance_grpo --out "$OUT/flux.json"
fi

write_status true
echo "wrote $OUT/steps.json ($(( $(date +%s) - STARTED ))s)"
grep -qE '"status": "(failed|timeout)"' "$OUT/steps.json" && exit 1
exit 0
