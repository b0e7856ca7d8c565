"""Exact linear assignment on the device, batched over every (decoder layer, image) problem, with no host sync.

It is scipy's `linear_sum_assignment` (scipy/optimize/rectangular_lsap: Crouse's shortest augmenting path, the
LAPJV family) with the same float64 operations in the same order, so it finds scipy's assignment, ties included, as
long as the ops round alike (they are additions only: no FMA contraction). Per problem, with n valid targets, the
rows are the targets and the columns the queries when n < Q (scipy transposes a tall matrix), else the queries and
the targets; n_r = min(n, Q) rows are added one at a time. Adding row r runs Dijkstra on reduced costs:

    i = r, minVal = 0, every column "remaining", spc = inf
    repeat:                                             # one search step
        mark i scanned (SR); for each remaining column j:
            c = minVal + cost[i, j] - u[i] - v[j];  if c < spc[j]: spc[j] = c, path[j] = i
        j = the remaining column of lowest spc: among ties the last free one in scipy's `remaining` order, else the
            first one; minVal = spc[j]; j leaves `remaining` (its slot takes the last remaining column) and joins SC
        if j is free: sink = j, stop;  else i = row4col[j]
    u[r] += minVal;  u[i] += minVal - spc[col4row[i]] for i in SR, i != r;  v[j] -= minVal - spc[j] for j in SC
    augment along sink, path[sink], col4row[path[sink]], ... back to row r

Vectorised, one `search_step` advances every problem by one search step and, where that step found a sink, updates
the duals, augments and starts the next row. The augmenting path is kept per scanned row as a column mask (the
path to row i is the path to row path[j] plus column j, where j brought i in), so augmenting is one masked write, not
a walk. The step count is fixed, so the graph is static; a problem whose rows are all added is `complete`.

Exactness: with the default step count, `worst_case_steps`, every problem completes and nothing is read on the host.
With fewer steps (faster; real DETR costs rarely need more than 4 per row) a problem may not finish, and
`DeviceMatcher` keeps exact one of two ways. Given the finite-loss guard's list (`incomplete_flags`), a training call
leaves its flag "some problem incomplete" on the device: the guard reads it with its own, in its one read per
optimizer step, and in that rare step recomputes the gradients with the host matcher (`on_host`;
detr_ft/train/nonfinite_guard.py). Without it (guard off, or evaluation's loss, which runs without grad) the call
reads the flag itself and solves the unfinished problems on the host (`host_assignment`): one read per call.

Bound: a search for row r scans at most r + 1 columns (every scanned column but the sink brings in a distinct,
already matched row), so `worst_case_steps(m) = m (m + 1) / 2` steps, m = min(Q, T), finish every problem. Real
DETR costs need far fewer; `solve` takes any step count and reports which problems completed.

Costs must be finite (`matching_costs` maps NaN/inf to the largest float32, as stock); they are solved in float64, as
scipy does, so those large values cannot overflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor

from detr_ft.model.matcher import UNMATCHED, host_assignment, hungarian_match, matching_costs

MATCHERS = ("host", "device", "auto")
# `--matcher auto` per device type, from `make bench` / scripts/gpu_check.sh (README, "Matcher"); a device without a
# measurement here gets the host matcher, the one known to work everywhere. CUDA: scipy 1.8 ms a step against the
# device matcher's 257 ms eager and 51 ms compiled (H200, DETR-R50 shapes, scripts/gpu_check.sh step 4, 2026-11-27).
MEASURED_CHOICE = {"cpu": "host", "cuda": "host"}


class Problems(NamedTuple):
    """Every problem in scipy's orientation, padded to M = max(Q, T): P = L * B problems."""

    cost: Tensor  # (P, M, M) float64: rows x columns, rows <= columns
    num_rows: Tensor  # (P,) long: min(n, Q)
    num_columns: Tensor  # (P,) long: max(n, Q)
    transposed: Tensor  # (P,) bool: rows are targets (n < Q)
    target_order: Tensor  # (P, T) long: the valid targets' indices first, in order


class SearchState(NamedTuple):
    row: Tensor  # (P,) long: the row being added (num_rows when complete)
    scan_row: Tensor  # (P,) long: the row whose edges the next step relaxes
    min_val: Tensor  # (P,) float64
    u: Tensor  # (P, M) float64: row duals
    v: Tensor  # (P, M) float64: column duals
    spc: Tensor  # (P, M) float64: shortest path costs of this search
    path: Tensor  # (P, M) long: the row that gave each column its spc
    scanned_rows: Tensor  # (P, M) bool: SR
    scanned_columns: Tensor  # (P, M) bool: SC
    position: Tensor  # (P, M) long: each column's slot in scipy's `remaining` array
    num_remaining: Tensor  # (P,) long
    row_path: Tensor  # (P, M+1, M) bool: columns on the tree path from `row` to each scanned row; row M: scratch
    row4col: Tensor  # (P, M) long, -1 where free
    col4row: Tensor  # (P, M) long, -1 where free


def worst_case_steps(num_queries: int, num_targets: int) -> int:
    """Search steps that finish every problem with Q queries and T target slots (see the module doc)."""
    rows = min(num_queries, num_targets)
    return rows * (rows + 1) // 2


def orient(cost: Tensor, valid: Tensor) -> Problems:
    """(L, B, Q, T) costs and (B, T) validity -> the problems scipy solves on each (layer, image)'s valid columns."""
    layers, batch_size, num_queries, num_targets = cost.shape
    size = max(num_queries, num_targets)
    num_valid = valid.sum(-1).repeat(layers)  # (P,)
    target_order = torch.argsort((~valid).to(torch.uint8), dim=-1, stable=True).repeat(layers, 1)  # (P, T)
    flat = cost.flatten(0, 1).double()  # (P, Q, T)
    compact = flat.gather(2, target_order[:, None, :].expand(-1, num_queries, -1))  # (P, Q, T): valid columns first
    queries_by_targets = torch.nn.functional.pad(compact, (0, size - num_targets, 0, size - num_queries))  # (P, M, M)
    transposed = num_valid < num_queries  # (P,)
    oriented = torch.where(transposed[:, None, None], queries_by_targets.transpose(1, 2), queries_by_targets)
    return Problems(oriented, num_valid.clamp(max=num_queries), num_valid.clamp(min=num_queries), transposed,
                    target_order)


def initial_state(problems: Problems) -> SearchState:
    num_problems, size = problems.cost.shape[:2]
    device = problems.cost.device
    columns = torch.arange(size, device=device)  # (M,)
    zeros = problems.cost.new_zeros(num_problems, size)  # (P, M)
    free = torch.full((num_problems, size), -1, dtype=torch.long, device=device)  # (P, M)
    no_rows = torch.zeros(num_problems, size, dtype=torch.bool, device=device)  # (P, M)
    first_row = torch.zeros(num_problems, dtype=torch.long, device=device)  # (P,)
    # distinct tensors: a compiled step guards on which inputs alias, so aliases here would recompile it once
    return SearchState(
        row=first_row, scan_row=first_row.clone(), min_val=problems.cost.new_zeros(num_problems), u=zeros,
        v=zeros.clone(), spc=torch.full_like(zeros, math.inf), path=free, scanned_rows=no_rows,
        scanned_columns=no_rows.clone(), position=problems.num_columns[:, None] - 1 - columns,
        num_remaining=problems.num_columns.clone(),
        row_path=torch.zeros(num_problems, size + 1, size, dtype=torch.bool, device=device), row4col=free.clone(),
        col4row=free.clone(),
    )


def search_step(problems: Problems, state: SearchState) -> SearchState:
    """One search step of every incomplete problem; where it reaches a free column: duals, augment, next row."""
    s = state
    num_problems, size = s.spc.shape
    device = s.spc.device
    columns = torch.arange(size, device=device)  # (M,)
    working = s.row < problems.num_rows  # (P,)
    remaining = (columns < problems.num_columns[:, None]) & ~s.scanned_columns & working[:, None]  # (P, M)

    scanned_rows = s.scanned_rows | ((columns == s.scan_row[:, None]) & working[:, None])  # (P, M)
    scan_row = s.scan_row.clamp(max=size - 1)  # (P,): a complete problem's row may be M
    cost_row = problems.cost.gather(1, scan_row[:, None, None].expand(-1, 1, size))[:, 0]  # (P, M)
    reduced = s.min_val[:, None] + cost_row - s.u.gather(1, scan_row[:, None]) - s.v
    # (P, M): scipy's `minVal + cost[i, j] - u[i] - v[j]`, left to right
    shorter = remaining & (reduced < s.spc)  # (P, M)
    spc = torch.where(shorter, reduced, s.spc)  # (P, M)
    path = torch.where(shorter, s.scan_row[:, None], s.path)  # (P, M)

    remaining_spc = torch.where(remaining, spc, math.inf)  # (P, M)
    lowest = remaining_spc.amin(-1)  # (P,)
    tied = remaining & (remaining_spc == lowest[:, None])  # (P, M)
    tied_free = tied & (s.row4col < 0)  # (P, M)
    last_free = torch.where(tied_free, s.position, -1).argmax(-1)  # (P,)
    first_tied = torch.where(tied, s.position, size).argmin(-1)  # (P,)
    column = torch.where(tied_free.any(-1), last_free, first_tied)  # (P,)
    picked = (columns == column[:, None]) & working[:, None]  # (P, M)
    min_val = torch.where(working, lowest, s.min_val)  # (P,)
    scanned_columns = s.scanned_columns | picked  # (P, M)
    # scipy's `remaining[index] = remaining[--num_remaining]`: the last slot's column moves into the freed slot
    picked_position = s.position.gather(1, column[:, None])  # (P, 1)
    moved = remaining & (s.position == (s.num_remaining - 1)[:, None])  # (P, M)
    position = torch.where(moved, picked_position, s.position)  # (P, M)
    num_remaining = s.num_remaining - working.long()  # (P,)

    matched_row = s.row4col.gather(1, column[:, None])[:, 0]  # (P,)
    sink = working & (matched_row < 0)  # (P,)
    extend = working & ~sink  # (P,)
    # the tree path to the row `column` brings in: the path to the row that labelled `column`, plus `column`
    labelled_by = path.gather(1, column[:, None])[:, 0].clamp(min=0)  # (P,)
    path_to_column = s.row_path.gather(1, labelled_by[:, None, None].expand(-1, 1, size))[:, 0] | picked  # (P, M)
    new_row = torch.where(extend, matched_row, size)  # (P,): row M takes the writes of no row
    # in place, one row per problem (a scatter would copy all M^2); a root's row is never stale: unmatched rows are
    # never brought in
    s.row_path[torch.arange(num_problems, device=device), new_row] = path_to_column  # (P, M) written
    scan_row = torch.where(extend, matched_row, s.scan_row)  # (P,)

    # sink reached: update the duals with the pre-augment col4row, then flip the path's columns
    finish = sink[:, None]  # (P, 1)
    row_spc = spc.gather(1, s.col4row.clamp(min=0))  # (P, M)
    is_root = columns == s.row[:, None]  # (P, M)
    u = torch.where(finish & is_root, s.u + min_val[:, None], s.u)  # (P, M)
    u = torch.where(finish & scanned_rows & ~is_root, u + (min_val[:, None] - row_spc), u)  # (P, M)
    v = torch.where(finish & scanned_columns, s.v - (min_val[:, None] - spc), s.v)  # (P, M)
    flip = finish & path_to_column  # (P, M)
    row4col = torch.where(flip, path, s.row4col)  # (P, M)
    col4row = torch.cat([s.col4row, s.col4row[:, :1]], 1)  # (P, M+1): the last slot takes the writes of no column
    col4row = col4row.scatter(1, torch.where(flip, path, size), columns.expand(num_problems, -1))[:, :size]
    col4row = torch.where(finish, col4row, s.col4row)  # (P, M)

    # the next row starts afresh
    row = s.row + sink.long()  # (P,)
    position_reset = problems.num_columns[:, None] - 1 - columns  # (P, M)
    return SearchState(
        row=row, scan_row=torch.where(sink, row, scan_row), min_val=torch.where(sink, 0.0, min_val), u=u, v=v,
        spc=torch.where(finish, math.inf, spc), path=path,
        scanned_rows=scanned_rows & ~finish, scanned_columns=scanned_columns & ~finish,
        position=torch.where(finish, position_reset, position),
        num_remaining=torch.where(sink, problems.num_columns, num_remaining),
        row_path=s.row_path, row4col=row4col, col4row=col4row,
    )


def assignment(problems: Problems, state: SearchState, num_queries: int) -> tuple[Tensor, Tensor]:
    """Matched target of each query, UNMATCHED where none, (P, Q); and which problems completed, (P,)."""
    compact = torch.where(problems.transposed[:, None], state.row4col, state.col4row)[:, :num_queries]  # (P, Q)
    num_targets = problems.target_order.shape[1]
    in_range = (compact >= 0) & (compact < num_targets)  # (P, Q)
    target = problems.target_order.gather(1, compact.clamp(0, max(num_targets - 1, 0))) if num_targets else compact
    return torch.where(in_range, target, UNMATCHED), state.row >= problems.num_rows


@torch.no_grad()
def solve(cost: Tensor, valid: Tensor, steps: int | None = None, step_function=search_step) -> tuple[Tensor, Tensor]:
    """Minimum-cost matching of queries to valid targets for every (layer, image): (L, B, Q, T) finite costs,
    (B, T) bool -> matched target per query (L, B, Q) long (UNMATCHED where none) and complete (L, B) bool.

    `steps` search steps (default `worst_case_steps`, which completes every problem); `step_function` may be a
    compiled `search_step`.
    """
    layers, batch_size, num_queries, num_targets = cost.shape
    problems = orient(cost, valid)
    state = initial_state(problems)
    for _ in range(worst_case_steps(num_queries, num_targets) if steps is None else steps):
        state = step_function(problems, state)
    matched, complete = assignment(problems, state, num_queries)
    return matched.view(layers, batch_size, num_queries), complete.view(layers, batch_size)


class DeviceMatcher:
    """`hungarian_match`'s drop-in that solves on the device (`solve`).

    steps: search steps per call; 0 = `worst_case_steps` (no host read). With fewer, a problem may not finish: see
    the module doc (one read per call, or the flag left in `incomplete_flags`). compile_backend: run `search_step`
    through torch.compile with this backend (None: eager).
    """

    def __init__(self, steps: int = 0, compile_backend: str | None = None):
        self.steps = steps
        self.step_function = search_step if compile_backend is None else torch.compile(
            search_step, fullgraph=True, dynamic=False, backend=compile_backend)
        # Set by the finite-loss guard: training calls append their () bool flag "some problem incomplete" here,
        # on the device, instead of reading it. None: each call reads its own.
        self.incomplete_flags: list[Tensor] | None = None
        self.host_only = False

    def __call__(
        self, logits: Tensor, pred_boxes: Tensor, labels: dict[str, Tensor],
        class_cost: float, bbox_cost: float, giou_cost: float,
    ) -> Tensor:
        if self.host_only:
            return hungarian_match(logits, pred_boxes, labels, class_cost, bbox_cost, giou_cost)
        carry_flag = self.incomplete_flags is not None and torch.is_grad_enabled()  # training (evaluation: no grad)
        with torch.no_grad():  # matching is not differentiated
            cost = matching_costs(logits, pred_boxes, labels["class_labels"], labels["boxes"], class_cost, bbox_cost,
                                  giou_cost)  # (L, B, Q, T)
            return self.assign(cost, labels["valid"], carry_flag)

    def assign(self, cost: Tensor, valid: Tensor, carry_flag: bool = False) -> Tensor:
        """(L, B, Q, T) finite costs, (B, T) bool -> matched target per query (L, B, Q): exact, or, with `carry_flag`
        (the flag left in `incomplete_flags`), exact once the guard has read it."""
        bound = worst_case_steps(*cost.shape[2:])
        steps = min(self.steps or bound, bound)
        matched, complete = solve(cost, valid, steps, self.step_function)  # (L, B, Q), (L, B)
        if steps == bound:
            return matched
        incomplete = ~complete.all()  # ()
        if carry_flag:
            self.incomplete_flags.append(incomplete)  # read with the guard's flag, once per optimizer step
        elif incomplete:  # the one host read of a short step count
            matched = torch.where(complete[..., None], matched, host_assignment(cost, valid))  # (L, B, Q)
        return matched

    @contextmanager
    def on_host(self) -> Iterator[None]:
        """Match with `hungarian_match` (scipy) inside: how the guard redoes a step some problem of which did not
        finish."""
        self.host_only = True
        try:
            yield
        finally:
            self.host_only = False


def choose_matcher(choice: str, device_type: str, steps: int = 0):
    """The match function of `--matcher` (host, device, auto: MEASURED_CHOICE) on a device type."""
    if choice not in MATCHERS:
        raise ValueError(f"--matcher must be one of {', '.join(MATCHERS)}, got {choice!r}")
    if choice == "auto":
        choice = MEASURED_CHOICE.get(device_type, "host")
    return hungarian_match if choice == "host" else DeviceMatcher(steps)
