"""An exact prefix cache: the KV states (and prompt log-probs) of token prefixes already computed, in a radix tree.

Why: log-likelihood tasks send one request per answer choice, each repeating the whole context, and few-shot
examples repeat across the items of a task. A prefix's keys and values depend on nothing but its own tokens and
their positions (causal attention, positions counted from the prompt's start), so a prefix computed once serves
every later prompt that starts with it; only the rest of the prompt is run through the model.

What the tree holds for the token at position p of a path:
* its keys and values in every layer, as the model's cache stores them (keys after the rotary embedding): a node
  keeps `kv` of shape `[layers, 2, kv_heads, len(tokens), head_dim]`;
* optionally its prompt score: the log-prob of the token given the tokens before it and the top-k entries of
  that next-token distribution (`top_k` says how many were kept, -1: none, e.g. for a generation prompt's tokens;
  position 0 has no score and holds a placeholder row). A scoring request reuses only positions scored with at
  least its own k.

The next-token distribution after a reused prefix is not stored (a vocabulary-sized row per position); the engine
recomputes the last reused token instead, one token per prompt.

Memory: a node counts its tensors' bytes plus TOKEN_OVERHEAD_BYTES per token for the Python token list. Leaves are
evicted least recently used first until the total fits the capacity; an evicted leaf can make its parent a leaf.
Only the model worker thread uses a cache: no locking.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

TOKEN_OVERHEAD_BYTES = 36  # a Python int above the small-int cache (28 bytes) and its list slot (8)


@dataclass
class Scores:
    """Prompt scores of a run of tokens: each token's log-prob and the top-k entries of its position."""

    logprobs: torch.Tensor  # [n] float32
    top_ids: torch.Tensor  # [n, k] int64
    top_values: torch.Tensor  # [n, k] float32
    top_k: int

    def __len__(self) -> int:
        return len(self.logprobs)

    def slice(self, lo: int, hi: int, k: int | None = None) -> Scores:
        k = self.top_k if k is None else k
        return Scores(self.logprobs[lo:hi], self.top_ids[lo:hi, :k], self.top_values[lo:hi, :k], k)

    def clone(self) -> Scores:
        return Scores(self.logprobs.clone(), self.top_ids.clone(), self.top_values.clone(), self.top_k)

    @property
    def nbytes(self) -> int:
        return self.logprobs.nbytes + self.top_ids.nbytes + self.top_values.nbytes

    @staticmethod
    def cat(parts: Sequence[Scores]) -> Scores:
        import torch

        k = min(p.top_k for p in parts)
        return Scores(torch.cat([p.logprobs for p in parts]), torch.cat([p.top_ids[:, :k] for p in parts]),
                      torch.cat([p.top_values[:, :k] for p in parts]), k)


_ids = itertools.count()


@dataclass(eq=False)
class Node:
    """A run of tokens in the tree (the edge from its parent) and the cached states of those tokens."""

    tokens: list[int]
    kv: torch.Tensor | None  # None only for the root
    parent: Node | None
    scores: Scores | None = None
    children: dict[int, Node] = field(default_factory=dict)
    last_used: int = 0
    key: int = field(default_factory=lambda: next(_ids))

    @property
    def top_k(self) -> int:
        return -1 if self.scores is None else self.scores.top_k

    @property
    def nbytes(self) -> int:
        kv = 0 if self.kv is None else self.kv.nbytes
        return kv + (0 if self.scores is None else self.scores.nbytes) + TOKEN_OVERHEAD_BYTES * len(self.tokens)


@dataclass
class Match:
    """The longest cached prefix of a prompt: `length` tokens, whole nodes and the head of the last one."""

    length: int
    segments: list[tuple[Node, int]]  # (node, how many of its tokens), root side first


class PrefixCache:
    """A radix tree of token prefixes with their KV states, bounded to `capacity_bytes` by LRU eviction."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.root = Node(tokens=[], kv=None, parent=None)
        self.nbytes = 0
        self.tokens = 0
        self.evicted_tokens = 0
        self._nodes: dict[int, Node] = {}  # every node but the root
        self._clock = itertools.count(1)

    # -- reading

    def match(self, ids: Sequence[int], scores_k: int | None = None) -> Match:
        """The longest cached prefix of `ids`. With `scores_k`, only positions scored with at least that many top
        entries count (a prompt that must be scored needs them)."""
        node, pos, segments = self.root, 0, []
        while pos < len(ids):
            child = node.children.get(ids[pos])
            if child is None or (scores_k is not None and child.top_k < scores_k):
                break
            n = common_length(child.tokens, ids, pos)
            segments.append((child, n))
            pos += n
            if n < len(child.tokens):
                break
            node = child
        return Match(pos, segments)

    def touch(self, match: Match) -> None:
        """Mark a match's nodes as just used."""
        self._touch(node for node, _ in match.segments)

    def kv_parts(self, match: Match, length: int) -> list[torch.Tensor]:
        """The KV states of the first `length` (<= match.length) tokens, one `[layers, 2, kv_heads, n, head_dim]` view
        per node, root side first (the engine copies them into place without joining them first)."""
        parts = []
        for node, n in match.segments:
            take = min(n, length)
            if take <= 0:
                break
            assert node.kv is not None
            parts.append(node.kv[:, :, :, :take])
            length -= take
        if length:
            raise ValueError("asked for more tokens than were matched")
        return parts

    def scores(self, match: Match, start: int, stop: int, k: int) -> Scores:
        """The stored scores of the prompt's positions start..stop-1 (within the match), k top entries each."""
        parts, pos = [], 0
        for node, n in match.segments:
            lo, hi = max(start - pos, 0), min(stop - pos, n)
            if lo < hi:
                if node.scores is None or node.top_k < k:
                    raise ValueError("the match was not made for scores with this many top entries")
                parts.append(node.scores.slice(lo, hi, k))
            pos += n
        if sum(len(p) for p in parts) != stop - start:
            raise ValueError("scores asked beyond the match")
        return Scores.cat(parts)

    # -- writing

    def insert(
        self,
        ids: Sequence[int],
        computed_from: int,
        kv: Callable[[int, int], torch.Tensor],
        scores: Callable[[int, int], Scores] | None = None,
    ) -> int:
        """Add the prompt `ids` whose positions computed_from.. were just run through the model.

        `kv(a, b)` gives the KV states of positions a..b-1 (a >= computed_from); `scores(a, b)` their scores, for
        a > computed_from, or a == 0 when computed_from == 0 (the placeholder row). Nodes already in the tree stay as they are, except that
        one covered entirely by scorable positions gets scores when it had none or fewer top entries. Returns the
        number of tokens added (0 when the prompt's path was evicted meanwhile or would not fit at all)."""
        node, pos, path = self.root, 0, []
        def scorable(p: int) -> bool:  # position p's score was computed (p == 0: the placeholder row)
            return scores is not None and (p > computed_from or p == computed_from == 0)

        while pos < len(ids):
            child = node.children.get(ids[pos])
            if child is None:
                break
            n = common_length(child.tokens, ids, pos)
            if n < len(child.tokens):
                if pos + n == len(ids):  # the prompt ends inside this node: nothing to add
                    path.append(child)
                    pos = len(ids)
                    break
                child = self._split(child, n)
            if scorable(pos) and scores is not None:
                new = scores(pos, pos + len(child.tokens))
                if new.top_k > child.top_k:
                    self._set_scores(child, new)
            path.append(child)
            pos += len(child.tokens)
            node = child
        added = 0
        if pos < len(ids) and pos >= computed_from:
            leaf = Node(tokens=list(ids[pos:]), kv=kv(pos, len(ids)), parent=node)
            if scorable(pos) and scores is not None:
                leaf.scores = scores(pos, len(ids))
            if leaf.nbytes <= self.capacity_bytes:
                node.children[leaf.tokens[0]] = leaf
                self._nodes[leaf.key] = leaf
                self.nbytes += leaf.nbytes
                self.tokens += len(leaf.tokens)
                added = len(leaf.tokens)
                path.append(leaf)
        self._touch(path)
        self.evict(keep={n.key for n in path})
        return added

    def evict(self, keep: Iterable[int] = ()) -> None:
        """Drop least recently used leaves until the cache fits its capacity (nodes in `keep` only when nothing
        else is left)."""
        keep = set(keep)
        while self.nbytes > self.capacity_bytes and self._nodes:
            leaves = [n for n in self._nodes.values() if not n.children]
            victim = min((n for n in leaves if n.key not in keep), key=lambda n: n.last_used, default=None)
            self._remove(victim or min(leaves, key=lambda n: n.last_used))

    def clear(self) -> None:
        self.evicted_tokens += self.tokens
        self.root.children.clear()
        self._nodes.clear()
        self.nbytes = self.tokens = 0

    def stats(self) -> dict[str, int]:
        return {"capacity_bytes": self.capacity_bytes, "bytes": self.nbytes, "tokens": self.tokens,
                "nodes": len(self._nodes), "evicted_tokens": self.evicted_tokens}

    # -- internals

    def _touch(self, nodes: Iterable[Node]) -> None:
        now = next(self._clock)
        for node in nodes:
            node.last_used = now

    def _set_scores(self, node: Node, scores: Scores) -> None:
        before = node.nbytes
        node.scores = scores
        self.nbytes += node.nbytes - before

    def _split(self, node: Node, n: int) -> Node:
        """Cut `node` after its first `n` tokens; the new upper part takes the node's place and is returned."""
        assert node.kv is not None and node.parent is not None and 0 < n < len(node.tokens)
        before = node.nbytes
        upper = Node(tokens=node.tokens[:n], kv=node.kv[:, :, :, :n].clone(), parent=node.parent,
                     last_used=node.last_used)
        if node.scores is not None:
            upper.scores = node.scores.slice(0, n).clone()
            node.scores = node.scores.slice(n, len(node.tokens)).clone()
        node.parent.children[upper.tokens[0]] = upper
        node.tokens, node.kv, node.parent = node.tokens[n:], node.kv[:, :, :, n:].clone(), upper
        upper.children[node.tokens[0]] = node
        self._nodes[upper.key] = upper
        self.nbytes += upper.nbytes + node.nbytes - before
        return upper

    def _remove(self, node: Node) -> None:
        assert node.parent is not None and not node.children
        del node.parent.children[node.tokens[0]]
        del self._nodes[node.key]
        self.nbytes -= node.nbytes
        self.tokens -= len(node.tokens)
        self.evicted_tokens += len(node.tokens)


def common_length(tokens: Sequence[int], ids: Sequence[int], pos: int = 0) -> int:
    """How many leading `tokens` equal ids[pos:] (slice comparisons run in C; a binary search finds the first
    difference)."""
    n = min(len(tokens), len(ids) - pos)
    head, other = list(tokens[:n]), list(ids[pos:pos + n])
    if head == other:
        return n
    lo, hi = 0, n - 1  # head[:lo] == other[:lo] holds, head[:hi + 1] != other[:hi + 1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if head[:mid] == other[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
