"""The benchmark registry, suites and name resolution of ``hierarchos benchmark``
(spec evaluation.md §5.3): which names map to which lm-eval task ids, what is external."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple


@dataclasses.dataclass(frozen=True)
class Benchmark:
    key: str
    display_name: str
    category: str
    modality: str             # "text" runs through lm-eval; anything else is external
    harness_task: str | None  # lm-eval task id
    primary_metric: str

    @property
    def runnable(self) -> bool:
        return bool(self.harness_task) and self.modality == "text"

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), runnable=self.runnable)


def _b(key, name, category, modality, task, metric) -> Benchmark:
    return Benchmark(key, name, category, modality, task, metric)


# Registry order matters: it is the order of the "all-runnable" and "all-common" suites.
BENCHMARKS: tuple[Benchmark, ...] = (
    _b("mmlu", "MMLU", "knowledge", "text", "mmlu", "acc"),
    _b("mmlu_pro", "MMLU-Pro", "knowledge", "text", "mmlu_pro", "acc"),
    _b("gpqa", "GPQA", "science_reasoning", "text", "gpqa_main_n_shot", "acc"),
    _b("gpqa_diamond", "GPQA Diamond", "science_reasoning", "text", "gpqa_diamond_n_shot", "acc"),
    _b("aime25", "AIME 2025", "math", "text", "aime25", "exact_match"),
    _b("aime24", "AIME 2024", "math", "text", "aime24", "exact_match"),
    _b("gsm8k_cot", "GSM8K CoT", "math", "text", "gsm8k_cot", "exact_match"),
    _b("minerva_math", "Minerva Math", "math", "text", "minerva_math", "exact_match"),
    _b("bbh", "BIG-Bench Hard CoT", "reasoning", "text", "bbh_cot_fewshot", "exact_match"),
    _b("agieval", "AGIEval", "reasoning", "text", "agieval", "acc"),
    _b("drop", "DROP", "reading", "text", "drop", "f1"),
    _b("ifeval", "IFEval", "instruction_following", "text", "ifeval", "prompt_level_strict_acc"),
    _b("hellaswag", "HellaSwag", "commonsense", "text", "hellaswag", "acc_norm"),
    _b("arc_challenge", "ARC-Challenge", "commonsense", "text", "arc_challenge", "acc_norm"),
    _b("arc_agi", "ARC-AGI", "frontier_reasoning", "arc_grid", None, "exact_match"),
    _b("arc_agi_2", "ARC-AGI-2", "frontier_reasoning", "arc_grid", None, "exact_match"),
    _b("arc_agi_3", "ARC-AGI-3", "agentic_reasoning", "agentic", None, "relative_human_action_efficiency"),
    _b("arc_easy", "ARC-Easy", "commonsense", "text", "arc_easy", "acc_norm"),
    _b("winogrande", "WinoGrande", "commonsense", "text", "winogrande", "acc"),
    _b("truthfulqa_mc1", "TruthfulQA MC1", "truthfulness", "text", "truthfulqa_mc1", "acc"),
    _b("truthfulqa_mc2", "TruthfulQA MC2", "truthfulness", "text", "truthfulqa_mc2", "acc"),
    _b("humaneval", "HumanEval", "coding", "text", "humaneval", "pass@1"),
    _b("humaneval_instruct", "HumanEval Instruct", "coding", "text", "humaneval_instruct", "pass@1"),
    _b("mbpp", "MBPP", "coding", "text", "mbpp", "pass@1"),
    _b("mbpp_plus", "MBPP+", "coding", "text", "mbpp_plus", "pass@1"),
    _b("openai_mmlu", "OpenAI MMLU / MMMLU-style", "multilingual", "text", "openai_mmlu", "acc"),
    _b("belebele", "Belebele", "multilingual", "text", "belebele", "acc"),
    _b("mmmu", "MMMU", "multimodal", "multimodal", None, "acc"),
    _b("mmmu_pro", "MMMU-Pro", "multimodal", "multimodal", None, "acc"),
    _b("swe_bench_verified", "SWE-bench Verified", "agentic_coding", "agentic", None, "resolved"),
    _b("terminal_bench", "Terminal-Bench", "agentic_coding", "agentic", None, "resolved"),
    _b("livecodebench", "LiveCodeBench", "coding", "external_text", None, "pass@1"),
    _b("aider_polyglot", "Aider Polyglot", "agentic_coding", "agentic", None, "pass"),
    _b("hle", "Humanity's Last Exam", "frontier_reasoning", "external_text", None, "acc"),
    _b("simpleqa", "SimpleQA", "factuality", "external_text", None, "acc"),
    _b("healthbench", "HealthBench", "domain_health", "external_text", None, "grader_score"),
    _b("tau_bench", "TAU-bench", "agentic_tool_use", "agentic", None, "success_rate"),
    _b("swe_lancer", "SWE-Lancer", "agentic_coding", "agentic", None, "earned_value"),
)
BY_KEY = {b.key: b for b in BENCHMARKS}

_FRONTIER_TEXT = ("mmlu_pro", "gpqa_diamond", "aime25", "bbh", "ifeval", "truthfulqa_mc1", "gsm8k_cot",
                  "humaneval_instruct", "mbpp_plus", "arc_agi")
SUITES: dict[str, tuple[str, ...]] = {
    "smoke": ("hellaswag", "arc_challenge", "truthfulqa_mc1"),
    "rog-ally": ("arc_easy", "hellaswag", "truthfulqa_mc1"),
    "frontier-text": _FRONTIER_TEXT,
    "frontier": _FRONTIER_TEXT + ("arc_agi_3", "mmmu", "swe_bench_verified", "terminal_bench", "livecodebench",
                                  "hle", "tau_bench"),
    "academic-core": ("mmlu", "mmlu_pro", "gpqa_diamond", "bbh", "agieval", "drop"),
    "math": ("aime25", "aime24", "gsm8k_cot", "minerva_math"),
    "coding": ("humaneval", "humaneval_instruct", "mbpp", "mbpp_plus", "livecodebench"),
    "commonsense": ("hellaswag", "arc_challenge", "arc_easy", "winogrande"),
    "arc-agi-family": ("arc_agi", "arc_agi_2", "arc_agi_3"),
    "truthfulness": ("truthfulqa_mc1", "truthfulqa_mc2", "simpleqa"),
    "multilingual": ("openai_mmlu", "belebele"),
    "multimodal": ("mmmu", "mmmu_pro"),
    "agentic": ("swe_bench_verified", "terminal_bench", "tau_bench", "aider_polyglot", "swe_lancer"),
    "all-runnable": tuple(b.key for b in BENCHMARKS if b.runnable),
    "all-common": tuple(b.key for b in BENCHMARKS),
}
DEFAULT_SUITE = "frontier-text"

ALIASES = {
    **{a: "mmlu_pro" for a in ("mmlu-pro", "mmlu pro")},
    **{a: "gpqa_diamond" for a in ("gpqa-diamond", "gpqa diamond")},
    **{a: "aime25" for a in ("aime2025", "aime-2025", "aime 2025")},
    **{a: "aime24" for a in ("aime2024", "aime-2024", "aime 2024")},
    **{a: "arc_agi" for a in ("arc-agi", "arc agi", "arcagi", "arc-agi-1", "arc agi 1")},
    **{a: "arc_agi_2" for a in ("arc-agi-2", "arc agi 2")},
    **{a: "arc_agi_3" for a in ("arc-agi-3", "arc agi 3")},
    "gsm8k": "gsm8k_cot",
    **{a: "bbh" for a in ("big-bench-hard", "bigbench-hard", "big bench hard")},
    **{a: "humaneval" for a in ("human-eval", "human eval")},
    "mbpp+": "mbpp_plus",
    **{a: "swe_bench_verified" for a in ("swebench", "swe-bench", "swe-bench-verified", "swe bench verified")},
    **{a: "terminal_bench" for a in ("terminal-bench", "terminal bench")},
    **{a: "livecodebench" for a in ("live-code-bench", "live code bench")},
    **{a: "hle" for a in ("humanity's last exam", "humanitys last exam")},
    "health-bench": "healthbench",
    "tau-bench": "tau_bench",
    "swe-lancer": "swe_lancer",
}


def canonical_name(name: str) -> str:
    """Alias table (lower-cased), then ``_`` -> ``-`` (alias or suite), then ``-`` -> ``_``
    (key or suite); otherwise the name as given (a raw lm-eval task id)."""
    raw = name.strip()
    if raw.lower() in ALIASES:
        return ALIASES[raw.lower()]
    dashed = raw.lower().replace("_", "-")
    if dashed in ALIASES:
        return ALIASES[dashed]
    for candidate in (dashed, dashed.replace("-", "_")):
        if candidate in BY_KEY or candidate in SUITES:
            return candidate
    return raw


def _unique(items):
    return list(dict.fromkeys(items))


def expand(names) -> list[str]:
    """Suites expanded in order, registry keys canonicalised, others kept; duplicates dropped."""
    out = []
    for name in names:
        canon = canonical_name(name)
        if canon in SUITES:
            out.extend(SUITES[canon])
        elif canon in BY_KEY:
            out.append(canon)
        else:
            out.append(name)
    return _unique(out)


class Resolved(NamedTuple):
    tasks: list[str]             # lm-eval task ids to run
    external: list[Benchmark]    # registry entries that do not run through lm-eval
    unknown: list[str]           # names passed to lm-eval as raw task ids


def resolve(names, default_suite: str | None = None) -> Resolved:
    """Names (suites, keys, aliases, raw task ids) -> lm-eval tasks, external entries, unknowns."""
    names = list(names or ([default_suite] if default_suite else []))
    tasks, external, unknown = [], [], []
    for key in expand(names):
        spec = BY_KEY.get(canonical_name(key))
        if spec is None:
            tasks.append(key)
            unknown.append(key)
        elif spec.runnable:
            tasks.append(spec.harness_task)
        else:
            external.append(spec)
    return Resolved(_unique(tasks), list({b.key: b for b in external}.values()), _unique(unknown))


def spec_for_task(task: str) -> Benchmark:
    for b in BENCHMARKS:
        if b.harness_task == task:
            return b
    return Benchmark(task, task, "custom", "text", task, "")


def catalog() -> str:
    """The text of ``hierarchos benchmark --list-benchmarks``."""
    lines = ["Benchmark suites:"]
    lines += [f"  {name}: {', '.join(keys)}" for name, keys in sorted(SUITES.items())]
    lines += ["", "Benchmarks:"]
    for b in BENCHMARKS:
        kind = "runnable" if b.runnable else "external"
        lines.append(f"  {b.key:<22} {b.harness_task or 'external':<24} {kind:<9} {b.display_name}")
    return "\n".join(lines)
