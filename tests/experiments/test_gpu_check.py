"""experiments/gpu_check/gpu_check.py runs at tiny size on CPU, so the GPU check cannot rot between GPU loans."""
import importlib.util
import json
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "gpu_check" / "gpu_check.py"


def test_the_gpu_check_runs_a_bf16_grace_step_at_tiny_size_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--shape", "tiny", "--device", "cpu", "--no-compile", "--skip-large", "--json", str(tmp_path / "out.json")])
    assert json.loads((tmp_path / "out.json").read_text()) == results
    step = results[0]["bf16_step"]
    # bf16 autocast: the correction is on by default (auto) and the mismatch is measured.
    for key in ("rollout/logprob_mismatch_abs_mean", "rollout/logprob_mismatch_kl", "rollout/logprob_mismatch_ratio_max", "rollout/importance_weight_mean"):
        assert math.isfinite(step[key]), key
    assert step["rollout/logprob_mismatch_ratio_max"] >= 1.0 and step["time/step_seconds"] > 0
    assert results[0]["parameters_millions"] > 0 and results[0]["peak_memory_gib"] > 0
    # The tokenizer it carries is SmolLM2's, and small enough to travel with the working tree.
    assert sum(f.stat().st_size for f in (SCRIPT.parent / "tokenizer").iterdir()) < 8 * 2**20
