"""The continual embedded Reber grammar (Gers, Schmidhuber & Cummins 2000, "Learning to forget", section 4).

Symbols, one-hot in this order (D = O = 7): ``B T P S X V E``.

The Reber grammar (Reber 1967; Cleeremans, Servan-Schreiber & McClelland 1989; Hochreiter &
Schmidhuber 1997, fig. 3) is the automaton below; every node with two arcs takes each with
probability 1/2, and a Reber string is the symbols read along a path from B to E:

    start -B-> 1      1 -T-> 2   1 -P-> 3      2 -S-> 2   2 -X-> 4      3 -T-> 3   3 -V-> 5
    4 -X-> 3   4 -S-> 6      5 -P-> 4   5 -V-> 6      6 -E-> end

An *embedded* Reber string (Smith & Zipser 1989; Cleeremans et al. 1989; Hochreiter & Schmidhuber
1997) is ``B``, a branch symbol ``T`` or ``P`` (1/2 each), a Reber string, the *same* branch symbol
again, then ``E``. The *continual* task (Gers et al. 2000) concatenates embedded strings without any
reset or separator: ``B T <Reber> T E B P <Reber> P E B ...``. Each sequence here is a window of such
a stream that begins at the start of an embedded string: ``seq_len + 1`` symbols s_0 .. s_T are
generated, and

    x [B, T, 7] = one-hot(s_0 .. s_{T-1}),   y [B, T] int = s_1 .. s_T    (readout "all", mask None)

so every step has its next symbol in the window and every step is scored: the loss is the mean
cross-entropy of the actual next symbol over all T steps. The generator runs the whole automaton
(outer embedding + inner Reber nodes, 11 nodes, plus the remembered branch) as one ``lax.scan`` over
the T + 1 steps, each sequence taking its transitions from its own pre-drawn fair coins.

The *hard* (long-dependency) predictions are the second branch symbols: step t with s_t the inner E
and s_{t+1} the repeated T or P. Only a model that remembered the branch across the whole Reber
string gets them right, so the metric is the accuracy there (what Gers et al. measure; the other
predictions are local). In a batch they are exactly the steps with ``x_t = E`` and ``y_t`` in {T, P}
(the outer E is always followed by B).

Baselines, from the automaton alone (``reber_losses``, exact; independent of the jax generator).
The grammar is deterministic given the history (the two arcs of a node carry different symbols), so
the predictor that knows the grammar state predicts the true next-symbol distribution: it pays ln 2
when the next symbol comes from a two-arc node (the branch choice and inner nodes 1-5) and 0 when it
is forced. With p_t(n) the probability that symbol s_t is emitted from node n (propagated exactly
from the start node), its expected loss over the window is

    optimal = ln 2 / T * sum_{t=1..T} p_t(two-arc nodes)
    trivial = optimal + ln 2 / T * sum_{t=1..T} p_t(repeat node)

``trivial`` is the predictor that knows the local grammar state but not the embedding's branch:
at each repeat position it can only guess T or P (1/2 each) and pays ln 2 more. For long windows
an embedded string has 12 symbols and 7 fair choices on average (the branch, and 6 inside the
Reber string, whose mean length is 8), so optimal -> 7 ln 2 / 12 = 0.4043 (the entropy rate) and
trivial -> 8 ln 2 / 12 = 0.4621. ``baseline_loss`` is ``trivial``; the run counts as solved when
the loss falls below optimal + ``solved_gap`` * (trivial - optimal): with the default 0.1 the model
must recover 90% of the information at the hard positions while predicting the rest near-optimally.

``seq_len`` >= 7: the shortest embedded string, ``B T B T X S E T E``, makes its hard prediction at
step 6 (a window of 7 holds one with probability 1/4; the mean gap between them is 12 steps).

``length_range`` is rejected: a continual stream has no natural length or end (a window of any
length is as valid as another), so variable lengths would test nothing new; vary ``seq_len``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rnnbench.cells.base import check_positive_int
from rnnbench.tasks.base import Batch, Task, accuracy, mean_cross_entropy

SYMBOLS = "BTPSXVE"
B_, T_, P_, S_, X_, V_, E_ = range(7)
NUM_SYMBOLS = len(SYMBOLS)
MIN_SEQ_LEN = 7  # the first possible hard step: B T B T X S E|T E predicts the repeat at t = 6

# The automaton's nodes: 0 emits the outer B, 1 the branch, 2-8 are the Reber grammar's start (its
# B) and nodes 1-6, 9 repeats the branch and 10 emits the outer E. Row n: (symbol, next node) for
# coin 0 and coin 1 (equal on forced nodes). Node 9's symbol is the remembered branch (row unused).
BRANCH_NODE, REPEAT_NODE = 1, 9
_ARCS = (
    ((B_, 1), (B_, 1)),    # 0: outer B
    ((T_, 2), (P_, 2)),    # 1: the branch (remembered)
    ((B_, 3), (B_, 3)),    # 2: Reber start -B-> 1
    ((T_, 4), (P_, 5)),    # 3: Reber node 1
    ((S_, 4), (X_, 6)),    # 4: Reber node 2
    ((T_, 5), (V_, 7)),    # 5: Reber node 3
    ((X_, 5), (S_, 8)),    # 6: Reber node 4
    ((P_, 6), (V_, 8)),    # 7: Reber node 5
    ((E_, 9), (E_, 9)),    # 8: Reber node 6 -E-> end
    ((T_, 10), (P_, 10)),  # 9: the branch again (symbol: the remembered one)
    ((E_, 0), (E_, 0)),    # 10: outer E
)
NUM_NODES = len(_ARCS)
EMIT = np.array([[arc[0] for arc in row] for row in _ARCS], np.int32)  # [nodes, 2]
NEXT = np.array([[arc[1] for arc in row] for row in _ARCS], np.int32)  # [nodes, 2]
CHOICE_NODES = tuple(n for n in range(NUM_NODES) if n != REPEAT_NODE and EMIT[n, 0] != EMIT[n, 1])


def reber_losses(seq_len: int) -> tuple[float, float]:
    """``(optimal, trivial)`` expected loss per step over a window of ``seq_len`` steps (module docstring)."""
    step = np.zeros((NUM_NODES, NUM_NODES))
    for n in range(NUM_NODES):
        for m in NEXT[n]:
            step[n, m] += 0.5
    p = np.eye(NUM_NODES)[0]  # s_0 comes from the start node
    choice = repeat = 0.0
    for _ in range(seq_len):
        p = p @ step  # p_t: the node that emits s_t, the target of step t - 1
        choice += p[list(CHOICE_NODES)].sum()
        repeat += p[REPEAT_NODE]
    optimal = math.log(2) * float(choice) / seq_len
    return optimal, optimal + math.log(2) * float(repeat) / seq_len


def hard_positions(batch: Batch):
    """``[B, T]`` bool: the long-dependency steps, whose target is the repeated branch symbol."""
    return (batch.x[..., E_] > 0.5) & ((batch.y == T_) | (batch.y == P_))


def reber(seq_len: int = 500, solved_gap: float = 0.1, length_range: list[int] | None = None) -> Task:
    """Continual embedded Reber grammar: next-symbol prediction over a stream of ``seq_len`` steps.

    Solved when the loss is below optimal + ``solved_gap`` * (trivial - optimal) (module docstring).
    """
    check_positive_int("task.seq_len", seq_len)
    if seq_len < MIN_SEQ_LEN:
        raise ValueError(f"task.seq_len={seq_len} is too short for reber: it needs >= {MIN_SEQ_LEN}, the shortest "
                         "window that can hold a long-dependency prediction")
    if (not isinstance(solved_gap, (int, float)) or isinstance(solved_gap, bool)
            or not 0.0 < solved_gap < 1.0):
        raise ValueError(f"task.solved_gap={solved_gap!r} must be in (0, 1): a fraction of the gap between "
                         "the optimal and the trivial loss")
    if length_range is not None:
        raise ValueError(f"task.length_range={length_range!r} is not supported by reber: a continual stream has "
                         "no natural length (use null and vary task.seq_len)")
    T = seq_len
    emit, nxt = jnp.asarray(EMIT), jnp.asarray(NEXT)

    def sample(key, batch_size):
        coins = jax.random.bernoulli(key, 0.5, (T + 1, batch_size)).astype(jnp.int32)

        def body(carry, coin):
            node, branch = carry
            branch = jnp.where(node == BRANCH_NODE, coin, branch)  # 0: T, 1: P
            symbol = jnp.where(node == REPEAT_NODE, emit[REPEAT_NODE, branch], emit[node, coin])
            return (nxt[node, coin], branch), symbol

        start = (jnp.zeros((batch_size,), jnp.int32), jnp.zeros((batch_size,), jnp.int32))
        _, symbols = jax.lax.scan(body, start, coins)  # [T + 1, B]
        symbols = symbols.T
        x = jax.nn.one_hot(symbols[:, :-1], NUM_SYMBOLS, dtype=jnp.float32)
        return Batch(x, symbols[:, 1:], None)

    def loss(pred, batch):
        return mean_cross_entropy(pred, batch.y)

    def metric(pred, batch):
        return accuracy(pred, batch.y, hard_positions(batch))

    optimal, trivial = reber_losses(T)
    return Task(name="reber", seq_len=T, input_dim=NUM_SYMBOLS, output_dim=NUM_SYMBOLS, readout="all",
                sample=sample, loss=loss, metric=metric, metric_name="accuracy", baseline_loss=trivial,
                solved_threshold=optimal + solved_gap * (trivial - optimal), length_range=None, generalises=True)
