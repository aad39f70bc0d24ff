"""Vowpal Wabbit logistic regressions along the funnel, with user x item-side interactions.

The peer many teams pick for online CTR: three VW workspaces (``--loss_function
logistic``, hashed into ``2**bits`` weights, VW's default adaptive, normalised
and importance-invariant SGD), one per funnel step, exactly as
:mod:`online_models.baselines.river_lr` splits the funnel and its labels:

- ``click``: ``p(click)``, from every sample with a click label;
- ``cart``: ``p(cart | click)``, from cart labels of clicked samples;
- ``purchase``: ``p(purchase | cart)``, from purchase labels of carted samples.

Predictions multiply along the funnel, so ``p_purchase <= p_cart <= p_click``.
A cart label that comes without its click label belongs to a clicked sample
(the label rule of :mod:`online_models.labels`); ``None`` is not learned.

Each sample is one VW text example with four namespaces: ``u`` the user,
``i`` the item, ``c`` the item's content (the category path's tokens of
:func:`~online_models.content.path_tokens`, the brand, the price bucket of
:func:`~online_models.content.price_buckets`) and ``d`` the device; ``-q ui
-q uc`` add the user x item and user x content crosses, which a linear model
over one-hot features (``river_lr``) cannot learn. ``sample.weight`` is the
example's importance weight. ``vowpalwabbit`` is imported when a model is
made, so ``recstream`` runs without it (it comes with the ``test`` extras).

The learning rate and its decay, measured by ``recstream bench quality`` on
the simulated stream (prequential, second half; AUC click / cart / purchase):
VW's defaults (``-l 0.5 --power_t 0.5``) lag ``river_lr`` (100k events, seed
7: 0.698 / 0.779 / 0.828 against 0.742 / 0.822 / 0.866), likely because each
weight's rate decays with its squared gradients while the shop drifts. A
slower decay at ``-l 0.5`` catches up: ``--power_t`` 0.25 gave 0.739 / 0.815
/ 0.859, 0.1 gave 0.743 / 0.819 / 0.863, 0 gave 0.741 / 0.819 / 0.863; at
0.1, ``-l 1`` gave 0.742 / 0.826 / 0.870; ``-l 0.1`` (at 0) 0.712 / 0.775 /
0.813. On 200k events, seed 11: ``river_lr`` 0.786 / 0.882 / 0.912, ``-l 0.5
--power_t 0.1`` 0.789 / 0.883 / 0.912 (``-l 1``: 0.784 / 0.883 / 0.911; the
defaults 0.753 / 0.855 / 0.895). Hence ``-l 0.5 --power_t 0.1``. Without
``-q`` (hashed one-hot features, ``river_lr``'s model) it gave 0.744 / 0.824 /
0.869 on 100k events: the simulated shop's crosses add nothing a linear model
lacks, while on a stream whose clicks hang on user x category (the tests')
only the crosses learn anything.

Example
-------
>>> from online_models.base import Sample, funnel_consistent
>>> model = VWFunnel(VWConfig(bits=16))
>>> s = Sample("u1", "i9", ts=1, category="books.novels", brand="pub", price=9.5, click=1.0)
>>> model.learn([s] * 5)
>>> p = model.predict([s])
>>> bool(p[0, 0] > 0.5), funnel_consistent(p), model.model_version
(True, True, 1)
>>> model.example(s)
'|u u=u1 |i i=i9 |c c=books.novels c=books b=pub p=8 |d d'
>>> twin = VWFunnel(VWConfig(bits=16))
>>> twin.load_state_dict(model.state_dict())
>>> bool((twin.predict([s]) == p).all())
True
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from online_models.base import TASKS, CandidateBlock, Learner, Sample
from online_models.content import path_tokens, price_buckets

_ESCAPES = str.maketrans(
    {" ": "%20", "\t": "%09", "\n": "%0A", "\r": "%0D", "|": "%7C", ":": "%3A", "%": "%25"}
)
"""VW's text format splits on whitespace, ``|`` and ``:``: escape them (and ``%``)."""


@dataclass(frozen=True, slots=True)
class VWConfig:
    """Hashing, interactions and SGD settings, shared by the three workspaces."""

    bits: int = 20
    learning_rate: float = 0.5
    power_t: float = 0.1
    l2: float = 0.0
    interactions: tuple[str, ...] = ("ui", "uc")

    def arguments(self) -> list[str]:
        """The VW command line of each workspace.

        >>> " ".join(VWConfig(bits=18).arguments()[5:])
        '-b 18 -l 0.5 --power_t 0.1 --l2 0.0 -q ui -q uc'
        """
        quadratic = [arg for pair in self.interactions for arg in ("-q", pair)]
        return [
            *("--quiet", "--loss_function", "logistic", "--link", "logistic"),
            *("-b", str(self.bits), "-l", str(self.learning_rate)),
            *("--power_t", str(self.power_t), "--l2", str(self.l2), *quadratic),
        ]


def _token(prefix: str, value: str | None) -> str:
    """``prefix=value`` escaped, or the bare ``prefix`` for a missing value."""
    return prefix if value is None else f"{prefix}={value.translate(_ESCAPES)}"


def user_side(user_id: str) -> str:
    """The user namespace of an example."""
    return "|u " + _token("u", user_id)


def item_side(
    item_id: str, category: str | None, brand: str | None, price_bucket: int, device: str | None
) -> str:
    """The item, content and device namespaces of an example.

    >>> item_side("i 1", "a.b", None, 3, "web")
    ' |i i=i%201 |c c=a.b c=a b p=3 |d d=web'
    >>> item_side("i1", None, "x|y", 1, None)
    ' |i i=i1 |c c b=x%7Cy p=1 |d d'
    """
    tokens = [_token("c", t) for t in path_tokens(category) if t is not None] or ["c"]
    return (
        f" |i {_token('i', item_id)} |c {' '.join(tokens)} {_token('b', brand)} "
        f"p={price_bucket} |d {_token('d', device)}"
    )


TEXT_CAPACITY = 200_000
"""Users' and items' example texts kept by a :class:`VWFunnel`, each."""


def _vowpalwabbit() -> tuple[Any, Any]:
    """The ``vowpalwabbit`` package and its ``pylibvw`` extension, imported on first use."""
    try:
        import pylibvw
        import vowpalwabbit
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError(
            "the 'vw' baseline needs Vowpal Wabbit: pip install vowpalwabbit "
            "(or this project's test extras)"
        ) from error
    return vowpalwabbit, pylibvw


class VWFunnel(Learner):
    """``p_click``, ``p(cart|click)``, ``p(purchase|cart)`` as VW logistic regressions.

    Parameters
    ----------
    config
        Hashing, interactions and learning rate.
    """

    name = "vw"

    def __init__(self, config: VWConfig | None = None) -> None:
        self.config = config or VWConfig()
        self._vowpalwabbit, self._pylibvw = _vowpalwabbit()
        self._workspaces = {
            task: self._vowpalwabbit.Workspace(arg_list=self.config.arguments()) for task in TASKS
        }
        self.model_version = 0
        self._user_text: dict[str, str] = {}
        self._item_text: dict[tuple[Any, ...], str] = {}

    def examples(self, samples: Sequence[Sample]) -> list[str]:
        """The unlabelled VW text example of each sample.

        The text of each user and of each (item, content, device) is kept (up
        to ``TEXT_CAPACITY`` of each, then all forgotten at once), since the
        same users and items come back batch after batch.
        """
        users, items = self._user_text, self._item_text
        if len(users) > TEXT_CAPACITY:
            users.clear()
        if len(items) > TEXT_CAPACITY:
            items.clear()
        out = []
        for s in samples:
            user = users.get(s.user_id)
            if user is None:
                user = users[s.user_id] = user_side(s.user_id)
            key = (s.item_id, s.category, s.brand, s.price, s.device)
            item = items.get(key)
            if item is None:
                bucket = int(price_buckets([s.price])[0])
                item = items[key] = item_side(s.item_id, s.category, s.brand, bucket, s.device)
            out.append(user + item)
        return out

    def example(self, sample: Sample) -> str:
        """The unlabelled VW text example of one sample."""
        return self.examples([sample])[0]

    def _predict_examples(self, lines: list[str]) -> np.ndarray:
        out = np.empty((len(lines), 3))
        vw = self._pylibvw.vw
        parse, predict, finish = vw._parse, vw.predict, vw._finish_example
        for column, task in enumerate(TASKS):
            workspace = self._workspaces[task]
            values = []
            for line in lines:
                (ex,) = parse(workspace, line)
                predict(workspace, ex)
                values.append(ex.get_simplelabel_prediction())
                finish(workspace, ex)
            out[:, column] = values
        return np.cumprod(out, axis=1)

    def predict(self, samples: Sequence[Sample], remembered: Any = None) -> np.ndarray:
        """``(n, 3)`` funnel probabilities."""
        return self._predict_examples(self.examples(samples))

    def predict_block(self, block: CandidateBlock) -> np.ndarray:
        """As :meth:`predict` of the block's samples, each user's and item's text built once."""
        users = [user_side(u) for u in block.user_ids]
        buckets = price_buckets(block.prices).tolist()
        items = [
            item_side(item, category, brand, bucket, None)
            for item, category, brand, bucket in zip(
                block.item_ids, block.categories, block.brands, buckets, strict=True
            )
        ]
        pairs = zip(block.pair_user.tolist(), block.pair_item.tolist(), strict=True)
        return self._predict_examples([users[u] + items[i] for u, i in pairs])

    def learn(self, samples: Sequence[Sample]) -> None:
        """Learn each known label in its step's conditional model, weighted by ``sample.weight``."""
        self.model_version += 1
        steps: dict[str, list[str]] = {task: [] for task in TASKS}
        for s, line in zip(samples, self.examples(samples), strict=True):
            if s.click is not None:
                steps["click"].append(f"{1 if s.click > 0 else -1} {s.weight!r} {line}")
            if s.cart is not None and s.click != 0:
                steps["cart"].append(f"{1 if s.cart > 0 else -1} {s.weight!r} {line}")
            if s.purchase is not None and s.cart != 0:
                steps["purchase"].append(f"{1 if s.purchase > 0 else -1} {s.weight!r} {line}")
        vw = self._pylibvw.vw
        parse, learn, finish = vw._parse, vw.learn, vw._finish_example
        for task, lines in steps.items():
            workspace = self._workspaces[task]
            for line in lines:
                (ex,) = parse(workspace, line)
                learn(workspace, ex)
                finish(workspace, ex)

    def state_dict(self) -> dict[str, Any]:
        """Each step's VW model file (weights and SGD state) as a uint8 tensor, and the updates."""
        state: dict[str, Any] = {"model_version": self.model_version}
        with tempfile.TemporaryDirectory() as folder:
            for task, workspace in self._workspaces.items():
                path = Path(folder) / task
                workspace.save(str(path))
                state[task] = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the models saved by :meth:`state_dict` (into this learner's config)."""
        workspaces = {}
        with tempfile.TemporaryDirectory() as folder:
            for task in TASKS:
                path = Path(folder) / task
                path.write_bytes(_model_bytes(state[task]))
                workspaces[task] = self._vowpalwabbit.Workspace(
                    arg_list=[
                        *self.config.arguments(),
                        *("--preserve_performance_counters", "-i", str(path)),
                    ]
                )
        for workspace in self._workspaces.values():
            workspace.finish()
        self._workspaces = workspaces
        self.model_version = int(state.get("model_version", 0))


def _model_bytes(value: Any) -> bytes:
    """A saved VW model's bytes, from the tensor of :meth:`VWFunnel.state_dict` (or an array)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if torch.is_tensor(value):
        value = value.numpy()
    return np.asarray(value, dtype=np.uint8).tobytes()
