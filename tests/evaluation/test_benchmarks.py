"""Standard benchmarks by name (grace/evaluation/benchmarks.py): resolved through mteb without loading data,
and refused at start-up with one line where their data cannot be had (no network here)."""
from __future__ import annotations

import subprocess
import sys

import mteb
import pytest
from cli_helpers import grace_train

from grace.evaluation.benchmarks import BENCHMARKS, DataUnavailable, check_data_available
from grace.evaluation.tasks import OFFLINE_SUITE, get_tasks

# The official GRACE eval.sh task list (mteb 1.38 names), 55 tasks; its "TweetSentimentClassification" is
# mteb's TweetSentimentExtractionClassification, and it leaves out StackExchangeClusteringP2P.
PAPER_TASKS = (
    "ArguAna CQADupstackRetrieval FiQA2018 NFCorpus SCIDOCS SciFact ClimateFEVER DBPedia NQ FEVER HotpotQA MSMARCO "
    "QuoraRetrieval TRECCOVID Touche2020 AskUbuntuDupQuestions MindSmallReranking SciDocsRR StackOverflowDupQuestions "
    "ArxivClusteringP2P ArxivClusteringS2S BiorxivClusteringP2P BiorxivClusteringS2S MedrxivClusteringP2P "
    "MedrxivClusteringS2S RedditClustering RedditClusteringP2P StackExchangeClustering TwentyNewsgroupsClustering "
    "SprintDuplicateQuestions TwitterSemEval2015 TwitterURLCorpus AmazonCounterfactualClassification "
    "AmazonPolarityClassification AmazonReviewsClassification Banking77Classification EmotionClassification "
    "ImdbClassification ToxicConversationsClassification MTOPDomainClassification MassiveIntentClassification "
    "MassiveScenarioClassification MTOPIntentClassification TweetSentimentExtractionClassification BIOSSES SICK-R "
    "STS12 STS13 STS14 STS15 STS16 STS17 STSBenchmark STS22 SummEval"
).split()


def test_mteb_eng_is_the_papers_56_english_tasks_with_mtebs_english_subsets():
    tasks = get_tasks(["mteb-eng"])
    names = [task.metadata.name for task in tasks]
    assert len(PAPER_TASKS) == 55 and len(names) == 56
    assert set(names) == set(PAPER_TASKS) | {"StackExchangeClusteringP2P"}
    by_name = {task.metadata.name: task for task in tasks}
    assert by_name["STS17"].hf_subsets == ["en-en"] and by_name["AmazonCounterfactualClassification"].hf_subsets == ["en"]
    assert not any(task.data_loaded for task in tasks)  # resolved from metadata alone


def test_bright_is_mtebs_bright_retrieval_over_its_twelve_domains():
    (task,) = get_tasks(["bright"])
    assert task.metadata.name == "BrightRetrieval" and task.metadata.main_score == "ndcg_at_10"
    assert len(task.hf_subsets) == 12 and {"biology", "leetcode", "theoremqa_theorems"} <= set(task.hf_subsets)
    assert [t.metadata.name for t in get_tasks(["bright-long"])] == ["BrightLongRetrieval"]


def test_every_set_resolves_to_mtebs_benchmark_and_gives_fresh_task_objects():
    for name, benchmark in BENCHMARKS.items():
        expected = [task.metadata.name for task in mteb.get_benchmark(benchmark).tasks]
        assert [task.metadata.name for task in get_tasks([name])] == expected
    first, second = get_tasks(["mteb-eng-v2"]), get_tasks(["mteb-eng-v2"])
    assert all(a is not b for a, b in zip(first, second))  # mteb keeps loaded data on its task objects
    mixed = [task.metadata.name for task in get_tasks(["small", "bright", "GraceLeeSTS"])]
    assert mixed == ["GraceLeeSTS", "GracePangLeePolarity", "BrightRetrieval"]  # in order, each once


def test_offline_a_hub_task_is_refused_and_the_offline_suite_is_not():
    # conftest sets HF_HUB_OFFLINE=1: no request is made, and nothing is in the local hub cache here.
    check_data_available(get_tasks(["offline"]), OFFLINE_SUITE)  # ships in packages: nothing to check
    with pytest.raises(DataUnavailable, match=r"the data of 1 task\(s\) \(BrightRetrieval\) is not available here"):
        check_data_available(get_tasks(["small", "bright"]), OFFLINE_SUITE)
    with pytest.raises(DataUnavailable, match=r"\(AmazonPolarityClassification, .* and 51 more\)"):
        check_data_available(get_tasks(["mteb-eng"]), OFFLINE_SUITE)


def test_grace_eval_with_a_benchmark_fails_at_start_up_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "grace.cli.eval", "eval.tasks=[bright]", "eval=debug", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "grace-eval: the data of 1 task(s) (BrightRetrieval) is not available here: the Hugging Face hub cannot be "
        "reached and it is not in the local cache; the offline suite needs no network (eval.tasks=[offline])"
    ]
    assert not (tmp_path / "wandb").exists()  # refused before a run started


def test_grace_train_refuses_a_final_evaluation_it_could_not_run_before_training(tmp_path):
    done = grace_train(
        "model=tiny-random", "logger=none", f"trainer.output_dir={tmp_path / 'run'}",
        "final_eval.enabled=true", "final_eval.tasks=[mteb-eng]", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and not (tmp_path / "run" / "metrics.jsonl").exists()
    assert "grace-train: invalid configuration: final_eval.tasks=['mteb-eng']: the data of 56 task(s)" in done.stderr
