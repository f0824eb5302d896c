"""Matches of a huge result spread evenly over the id range: the pages, samples and estimates that
need no ranking.

The id range is cut into windows [start, next start); FTS5 seeks to a rowid cheaply, so each
window's first matches cost little however common the words. Windows never overlap, so a match is
in exactly one, and a page takes matches window by window in turn (the first of every window,
then the second of every window...), the windows in an order that spreads any run of them over
the whole range (0, 32, 16, 48, 8, ... of 64), so a page shorter than the window count is spread
too. Corpora arrive one after another, so matches bunch up: where most windows are empty, the
others give more, until the page is full or the result has no more.

    windows = Windows.over(max_id, 50)
    sample = windows.sample(fetch, need=25_000)      # enough matches, spread
    ids = sample.page(offset=200, limit=100)         # the same order for every page
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

# fetch(start, end, after, limit) -> ids of matches with start <= id < end and id > after, in id order
Fetch = Callable[[int, int, int, int], list]


@dataclass(frozen=True)
class Windows:
    bounds: tuple[tuple[int, int], ...]  # [start, end) of each window, in order, covering 1..max_id

    @classmethod
    def over(cls, max_id: int, count: int) -> "Windows":
        count = max(1, min(count, max_id)) if max_id > 0 else 1
        starts = [1 + (max_id * i) // count for i in range(count)]
        ends = starts[1:] + [max_id + 1]
        return cls(tuple(zip(starts, ends)))

    def sample(self, fetch: Fetch, need: int) -> "Sample":
        """At least `need` matches in all (fewer only when there are no more), taken from the start
        of every window: an equal share from each, and what empty windows leave to the others."""
        sample = Sample([[] for _ in self.bounds], [False] * len(self.bounds))
        cap = 0
        while True:
            open_windows = [k for k, done in enumerate(sample.exhausted) if not done]
            have = sample.size
            if have >= need or not open_windows:
                return sample
            cap += max(1, -(-(need - have) // len(open_windows)))
            for k in open_windows:
                start, end = self.bounds[k]
                ids = sample.ids[k]
                wanted = cap - len(ids)
                more = fetch(start, end, ids[-1] if ids else start - 1, wanted)
                ids.extend(more)
                if len(more) < wanted:
                    sample.exhausted[k] = True

    def estimated_total(self, sample: "Sample") -> float:
        """The result's size from a sample, without counting: windows that ran out count their
        matches; in the others, the matches per id walked (up to the last one taken) times the window."""
        total = 0.0
        for (start, end), ids, done in zip(self.bounds, sample.ids, sample.exhausted):
            total += len(ids) if done or not ids else len(ids) * (end - start) / (ids[-1] - start + 1)
        return total


@dataclass
class Sample:
    """Each window's first matches (ids[k]), and whether the window has no more (exhausted[k])."""

    ids: list[list[int]]
    exhausted: list[bool]

    @property
    def size(self) -> int:
        return sum(len(ids) for ids in self.ids)

    @property
    def complete(self) -> bool:
        """Every match of the result is in the sample."""
        return all(self.exhausted)

    def page(self, offset: int, limit: int) -> list[int]:
        """Matches offset .. offset+limit in the spread order: depth by depth (each window's first,
        then each window's second, ...), the windows of a depth in spread_order."""
        windows = [self.ids[k] for k in spread_order(len(self.ids))]
        lengths = [len(ids) for ids in windows]
        # Matches before depth d: sum(min(length, d)). Find the depth the page starts in.
        low, high = 0, max(lengths, default=0)
        while low < high:
            middle = (low + high + 1) // 2
            if sum(min(n, middle) for n in lengths) <= offset:
                low = middle
            else:
                high = middle - 1
        depth, position, page = low, sum(min(n, low) for n in lengths), []
        while len(page) < limit:
            row = [ids[depth] for ids in windows if len(ids) > depth]
            if not row:
                break
            skip = max(0, offset - position)
            page.extend(row[skip : skip + limit - len(page)])
            position += len(row)
            depth += 1
        return page

    def weights(self, total: int) -> list[float]:
        """How many matches of the whole result each sampled match of window k stands for: 1 in
        windows the sample holds whole; in the others, the rest of the total shared evenly among
        them (the best guess without counting them)."""
        whole = sum(len(ids) for ids, done in zip(self.ids, self.exhausted) if done)
        partial = [len(ids) for ids, done in zip(self.ids, self.exhausted) if not done]
        if not partial:
            return [1.0] * len(self.ids)
        share = max(total - whole, sum(partial)) / sum(partial)
        return [1.0 if done else share for done in self.exhausted]

    def by_weight(self, total: int) -> list[tuple[float, list[int]]]:
        """The sampled ids grouped by weights(total): (weight, ids) for each weight in use."""
        groups: dict[float, list[int]] = {}
        for weight, ids in zip(self.weights(total), self.ids):
            if ids:
                groups.setdefault(weight, []).extend(ids)
        return list(groups.items())


def spread_order(count: int) -> list[int]:
    """0..count-1 in bit-reversed order, so that every prefix is spread over the whole range:
    spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]."""
    bits = max(1, (count - 1).bit_length())
    reversed_ = [int(format(k, f"0{bits}b")[::-1], 2) for k in range(1 << bits)]
    return [k for k in sorted(range(1 << bits), key=reversed_.__getitem__) if k < count]
