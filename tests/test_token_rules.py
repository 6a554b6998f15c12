"""ReplyRules computes what transformers' own processors compute, in place (core.inference.token_rules).

    .venv/bin/python -m pytest -q tests/test_token_rules.py

The real model's greedy replies under these rules are held to transformers' own `generate` with
its repetition penalty in tests/test_chat.py, and to their solo runs in Compare and batches.
"""
import pytest
import torch
from transformers import (LogitsProcessorList, MinLengthLogitsProcessor, MinNewTokensLengthLogitsProcessor,
                          RepetitionPenaltyLogitsProcessor)

from core.errors import LabError
from core.inference.token_rules import ReplyRules


def theirs(penalty: float, ends: list[int], least: int, prompt_length: int) -> LogitsProcessorList:
    """The processors `generate` builds for repetition_penalty and min_new_tokens."""
    return LogitsProcessorList([MinLengthLogitsProcessor(prompt_length + least, ends),
                                MinNewTokensLengthLogitsProcessor(prompt_length, least, ends),
                                RepetitionPenaltyLogitsProcessor(penalty)])


@pytest.mark.parametrize("answered", [0, 3, 5])
def test_the_same_scores_as_transformers_processors(answered):
    torch.manual_seed(answered)
    vocab, prompt_length, least, ends = 50, 6, 4, [2, 7]
    ids = torch.randint(0, vocab, (3, prompt_length + answered))
    ids[0, :3] = 9  # a token seen three times is penalized once, as theirs does
    ids[1, -1] = 2  # an end id in the ids: penalized, and masked too while the answer is short
    scores = torch.randn(3, vocab) * 4
    want = theirs(1.3, ends, least, prompt_length)(ids, scores.clone())
    got = ReplyRules(1.3, ends, least, prompt_length)(ids, scores)
    assert torch.equal(got, want)
    assert got.data_ptr() == scores.data_ptr(), "in place, no copy of the vocabulary's scores"
    assert bool(torch.isinf(got[:, ends]).all()) == (answered < least)


def test_ids_past_the_scores_are_ignored_as_transformers_does():
    scores, ids = torch.randn(2, 10), torch.tensor([[1, 12, 3], [10, 4, 4]])  # 10 and 12: no score of theirs
    want = RepetitionPenaltyLogitsProcessor(1.2)(ids, scores.clone())
    assert torch.equal(ReplyRules(1.2, [])(ids, scores), want)


def test_rules_that_change_nothing_are_left_out_and_a_bad_penalty_is_refused():
    assert not ReplyRules(1.0, [0], least=0).active()
    assert ReplyRules(1.0, [0], least=1).active() and ReplyRules(1.1, []).active()
    assert not ReplyRules(1.0, [], least=3).active()
    with pytest.raises(LabError, match="Repetition penalty must be above 0, not 0"):
        ReplyRules(0, [0])
