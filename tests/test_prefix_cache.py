"""The prefix cache's radix tree and the fair scheduler, on small synthetic tensors and jobs (no model: the real
model's exactness through them is checked in test_server.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from nemotron_eval.deploy.prefix_cache import TOKEN_OVERHEAD_BYTES, PrefixCache, Scores, common_length
from nemotron_eval.deploy.scheduler import FairScheduler

from support.request_mix import trie_floor

LAYERS, HEADS, DIM = 2, 1, 2


def states(ids: list[int], a: int, b: int) -> torch.Tensor:
    """Fake KV states that encode (position, token): [layers, 2, heads, b - a, dim]."""
    kv = torch.zeros((LAYERS, 2, HEADS, b - a, DIM))
    for i in range(a, b):
        kv[:, :, :, i - a, 0] = i
        kv[:, :, :, i - a, 1] = ids[i]
    return kv


def scores(ids: list[int], a: int, b: int, k: int = 1) -> Scores:
    """Fake scores: the log-prob of position i is -i - token/1000; top ids are the token itself."""
    lp = torch.tensor([-(i + ids[i] / 1000) for i in range(a, b)], dtype=torch.float64)
    top_ids = torch.tensor([[ids[i]] * k for i in range(a, b)], dtype=torch.long).reshape(b - a, k)
    return Scores(lp, top_ids, lp[:, None].repeat(1, k), k)


def put(cache: PrefixCache, ids: list[int], computed_from: int = 0, k: int | None = None) -> int:
    score = None if k is None else (lambda a, b: scores(ids, a, b, k))
    return cache.insert(ids, computed_from, lambda a, b: states(ids, a, b), score)


def kv(cache: PrefixCache, match, length: int) -> torch.Tensor:
    """The states `kv_parts` gives for a match, joined (as the engine lays them side by side)."""
    return torch.cat(cache.kv_parts(match, length), dim=3)


def node_bytes(kv_tokens: int, scored_tokens: int = 0, k: int = 1) -> int:
    return kv_tokens * (LAYERS * 2 * HEADS * DIM * 4 + TOKEN_OVERHEAD_BYTES) + scored_tokens * (8 + 16 * k)


def test_common_length() -> None:
    assert common_length([1, 2, 3], [1, 2, 3, 4]) == 3
    assert common_length([1, 2, 3], [0, 1, 2, 4], 1) == 2
    assert common_length([5], [6]) == 0
    assert common_length(list(range(1000)), list(range(999)) + [7]) == 999


def test_match_returns_the_states_of_the_longest_cached_prefix() -> None:
    cache = PrefixCache(10**6)
    a = [1, 2, 3, 4, 5, 6]
    b = [1, 2, 3, 9, 9]
    assert put(cache, a) == 6
    assert cache.match([7, 1, 2]).length == 0
    match = cache.match(b)
    assert match.length == 3
    assert torch.equal(kv(cache, match, 3), states(a, 0, 3))
    assert put(cache, b, computed_from=2) == 2  # splits a's node after 3 tokens
    assert cache.tokens == 8 and cache.stats()["nodes"] == 3
    for ids in (a, b):
        m = cache.match(ids + [42])
        assert m.length == len(ids) and torch.equal(kv(cache, m, len(ids)), states(ids, 0, len(ids)))
    assert cache.nbytes == node_bytes(8)
    assert put(cache, a[:4]) == 0  # a prefix of a cached prompt adds nothing
    with pytest.raises(ValueError):
        kv(cache, cache.match(b), 6)


def test_scores_need_at_least_the_requested_top_entries() -> None:
    cache = PrefixCache(10**6)
    ids = [4, 5, 6, 7]
    put(cache, ids)  # a generation prompt: states only
    assert cache.match(ids).length == 4 and cache.match(ids, scores_k=0).length == 0
    put(cache, ids, computed_from=0, k=1)  # scored later from scratch: the node gets scores
    assert cache.match(ids, scores_k=1).length == 4 and cache.match(ids, scores_k=2).length == 0
    got = cache.scores(cache.match(ids, scores_k=1), 1, 4, 1)
    assert torch.equal(got.logprobs, scores(ids, 1, 4).logprobs) and got.top_k == 1
    longer = ids + [8, 9]
    put(cache, longer, computed_from=3, k=2)  # positions 4.. new, scored with k=2; the old node keeps k=1
    assert cache.match(longer, scores_k=1).length == 6
    assert cache.match(longer, scores_k=2).length == 0
    two = cache.scores(cache.match(longer, scores_k=1), 4, 6, 1)
    assert torch.equal(two.logprobs, scores(longer, 4, 6).logprobs)


def test_least_recently_used_leaves_go_first_and_the_capacity_holds() -> None:
    one = node_bytes(10)
    cache = PrefixCache(capacity_bytes=3 * one)
    prompts = [[p] * 10 for p in range(1, 5)]
    for ids in prompts[:3]:
        put(cache, ids)
    cache.touch(cache.match(prompts[0]))  # prompt 1 used again: prompt 2 is now the oldest
    put(cache, prompts[3])
    assert [cache.match(ids).length for ids in prompts] == [10, 0, 10, 10]
    assert cache.nbytes == 3 * one <= cache.capacity_bytes and cache.evicted_tokens == 10
    # a shared parent is only evicted once its children are gone
    cache = PrefixCache(capacity_bytes=node_bytes(14))
    put(cache, [1] * 8 + [2, 2])
    put(cache, [1] * 8 + [3, 3], computed_from=8)
    put(cache, [9] * 4)
    assert cache.match([1] * 8 + [3, 3]).length == 10 and cache.match([1] * 8 + [2, 2]).length == 8
    assert cache.nbytes <= cache.capacity_bytes


def test_what_cannot_fit_is_not_stored_and_evicted_paths_are_not_extended() -> None:
    cache = PrefixCache(capacity_bytes=node_bytes(5))
    assert put(cache, list(range(6))) == 0 and cache.nbytes == 0
    put(cache, [1, 2, 3])
    # a prompt whose reused prefix (computed_from=3) is no longer in the tree cannot be attached
    assert put(cache, [7, 8, 9, 10], computed_from=3) == 0
    assert cache.match([1, 2, 3]).length == 3


def test_trie_floor_counts_distinct_prefixes() -> None:
    assert trie_floor([[1, 2, 3], [1, 2, 4], [1, 2, 3], [5]]) == 5


# ------------------------------------------------------------------------------------------------ scheduler


@dataclass(eq=False)
class FakeJob:
    client: str
    new_tokens: int
    generating: bool = False
    arrival: float = 0.0
    ids: list[int] = field(default_factory=list)
    cancelled: bool = False


def test_round_robin_lets_a_short_client_through_a_flood() -> None:
    s = FairScheduler(max_batch_size=8, max_batch_tokens=4096)
    for i in range(20):
        s.add(FakeJob("arc", 1600, arrival=i))
    for i in range(3):
        s.add(FakeJob("obqa", 20, arrival=100 + i))
    batches = [s.next_batch() for _ in range(3)]
    assert [[j.client for j in b] for b in batches] == [["arc", "arc"], ["obqa"] * 3, ["arc", "arc"]]
    assert len(s) == 16


def test_batches_group_kind_and_length_within_budget_and_padding() -> None:
    def lengths(s: FairScheduler) -> list[list[int]]:
        out = []
        while batch := s.next_batch():
            out.append([j.new_tokens for j in batch])
        return out

    s = FairScheduler(max_batch_size=2, max_batch_tokens=1000)
    for n, gen in ((50, False), (10, False), (5, True), (40, False), (30, False), (12, False)):
        s.add(FakeJob("a", n, generating=gen))
    assert lengths(s) == [[50, 40], [10, 12], [5], [30]]
    s = FairScheduler(max_batch_size=8, max_batch_tokens=10**6)
    for n in (1000, 1100, 80, 3000):
        s.add(FakeJob("a", n))
    # padding beyond half the real tokens (and over 256) closes a batch
    assert lengths(s) == [[1000, 1100], [80], [3000]]


def test_every_prompt_is_served_within_a_bounded_number_of_batches() -> None:
    """Three clients, one flooding: a prompt waits at most (its place in its own queue + 1) x clients batches,
    and a client that comes late gets the very next turn."""
    s = FairScheduler(max_batch_size=1, max_batch_tokens=10**6)
    for i in range(30):
        s.add(FakeJob("flood", 1600, arrival=i))
    for i in range(3):
        s.add(FakeJob("b", 20, arrival=100 + i))
    served: list[FakeJob] = []
    served += s.next_batch()
    s.add(late := FakeJob("late", 20, arrival=200))
    served += s.next_batch()  # b: the client after the one served last
    served += s.next_batch()
    assert served[-1] is late  # then the newcomer, before the flood's second prompt
    while batch := s.next_batch():
        served += batch
    for client, n in (("b", 3), ("flood", 30)):
        jobs = [j for j in served if j.client == client]
        assert len(jobs) == n and [j.arrival for j in jobs] == sorted(j.arrival for j in jobs)  # FIFO per client
    place = {id(j): i for i, j in enumerate(served)}
    b = [j for j in served if j.client == "b"]
    assert all(place[id(j)] <= (k + 1) * 3 for k, j in enumerate(b))


def test_conflicting_prompts_wait_for_a_later_batch() -> None:
    s = FairScheduler(max_batch_size=8, max_batch_tokens=10**6)
    for i in range(3):
        s.add(FakeJob("a", 100, arrival=i))
    batch = s.next_batch(conflicts=lambda job, batch: job.arrival == 1)
    assert [j.arrival for j in batch] == [0, 2] and [j.arrival for j in s.pending()] == [1]


def test_generating_prompts_wait_for_free_decoding_rows_while_scoring_goes_on() -> None:
    s = FairScheduler(max_batch_size=8, max_batch_tokens=10**6)
    jobs = [FakeJob("gen", 50, generating=True, arrival=i) for i in range(3)] + [FakeJob("score", 50, arrival=10)]
    for j in jobs:
        s.add(j)
    assert s.next_batch(max_generating=0) == [jobs[3]]  # the generating client is passed over
    assert s.next_batch(max_generating=0) == []
    assert s.next_batch(max_generating=2) == jobs[:2]  # no more than the free rows
    assert s.next_batch() == [jobs[2]]


def test_cancelled_prompts_are_dropped_from_every_queue() -> None:
    s = FairScheduler(max_batch_size=8, max_batch_tokens=10**6)
    jobs = [FakeJob(c, 10, arrival=i) for i, c in enumerate("abab")]
    for j in jobs:
        s.add(j)
    jobs[1].cancelled = jobs[2].cancelled = True
    assert {id(j) for j in s.drop_cancelled()} == {id(jobs[1]), id(jobs[2])}
    assert list(s.pending()) == [jobs[0], jobs[3]] and len(s) == 2
    assert s.drop_cancelled() == []
