"""One KV buffer for past and present, as onnxruntime-genai runs a graph whose genai_config says
`past_present_share_buffer` on the CPU: the past is fed as a buffer of fixed capacity with an attention mask as
long as the tokens so far, and the present is written into the same memory, so a step costs no copy of the
cache (a concatenating step copies all of it, per layer and step). (onnxruntime-genai's graph-capture mode feeds
a mask of the buffer's full length instead; that is not what the probe runs.)

`SharedCacheStep` is a step function for attnopt's loop (ONNX Runtime, CPU, through IOBinding);
`shares_cache_buffer` proves on a graph, by running it both ways, that sharing gives the concatenating run's
logits and cache. Only GroupQueryAttention reads and writes a cache in place, and only where its lengths come
from the attention mask rather than from the past's shape, which is what the probe settles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attnopt.models.decoder import CacheLayout


class SharedCacheStep:
    """The loop's step function over one ONNX Runtime CPU session whose past and present share a buffer.

    Takes and returns what a concatenating step does: the presents it returns are views of the buffers' first
    `total` positions. Fed those views back as the past, it runs in place; fed anything else (a new
    generation's empty past, or a past made elsewhere), it starts new buffers holding that past."""

    def __init__(self, session: Any, layout: CacheLayout, capacity: int = 256):
        from attnopt.runtime.onnxruntime import float_input_types

        self.session, self.layout = session, layout
        self.capacity = max(capacity, 1)
        self.dtype = float_input_types(session).get(layout.past_names()[0], np.float32)
        declared = {i.name for i in session.get_inputs()}
        self.feeds = [name for name in ("input_ids", "attention_mask", "position_ids") if name in declared]
        self.others = [o.name for o in session.get_outputs() if o.name not in layout.present_names()]
        self.buffers: dict[str, np.ndarray] = {}
        self.binding: Any = None

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pasts, presents = self.layout.past_names(), self.layout.present_names()
        total = feeds["attention_mask"].shape[1]
        past_length = feeds[pasts[0]].shape[2]
        # an empty past (a new generation) reuses the buffers when they fit: positions past the total are never read
        reusable = past_length == 0 and self.buffers and feeds[pasts[0]].shape[0] == self._batch()
        if not (reusable or self._holds(feeds, pasts)) or total > self._room():
            self._restart(feeds, pasts, presents, past_length, total)
        binding = self.binding
        for name in self.feeds:
            binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        for name in self.others:  # left to ONNX Runtime to allocate, every run (their shapes change)
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        # the binding's outputs come in the order they were first bound: the others, then the presents
        values = {name: value.numpy() for name, value in zip(self.others, binding.get_outputs())}
        for past, present in zip(pasts, presents):
            view = self.buffers[past][:, :, :total]
            view.flags.writeable = False  # the live cache: whoever holds the view must not write into it
            values[present] = view
        return values

    def hold(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`feeds` with their past moved into new buffers (room for the step they feed): the step called on
        what this returns runs in place, and called again repeats the same step (what a benchmark times)."""
        pasts = self.layout.past_names()
        past_length, total = feeds[pasts[0]].shape[2], feeds["attention_mask"].shape[1]
        self.capacity = max(self.capacity, total)
        self._restart(feeds, pasts, self.layout.present_names(), past_length, total)
        return {**feeds, **{p: self.buffers[p][:, :, :past_length] for p in pasts}}

    def _holds(self, feeds: dict[str, np.ndarray], pasts: list[str]) -> bool:
        """Whether the past fed is this step's own buffers: views of their first positions, every row."""
        def own(view: np.ndarray, buffer: np.ndarray) -> bool:
            return view.base is buffer and view.shape[:2] == buffer.shape[:2] and \
                view.__array_interface__["data"][0] == buffer.__array_interface__["data"][0]
        return bool(self.buffers) and all(own(feeds[p], self.buffers[p]) for p in pasts)

    def _room(self) -> int:
        return next(iter(self.buffers.values())).shape[2] if self.buffers else 0

    def _batch(self) -> int:
        return next(iter(self.buffers.values())).shape[0] if self.buffers else 0

    def _restart(self, feeds: dict[str, np.ndarray], pasts: list[str], presents: list[str], past_length: int,
                 total: int) -> None:
        """New buffers with room for `total` positions (and then some), holding the past fed, bound as both
        past and present for as long as they last."""
        import onnxruntime as ort

        while self.capacity < total:
            self.capacity *= 2
        shape = (feeds[pasts[0]].shape[0], self.layout.kv_heads, self.capacity, self.layout.head_dim)
        self.buffers, self.binding = {}, self.session.io_binding()
        for name in self.others:
            self.binding.bind_output(name)
        for past, present in zip(pasts, presents):
            buffer = np.zeros(shape, dtype=self.dtype)
            buffer[:, :, :past_length] = feeds[past]
            self.buffers[past] = buffer
            value = ort.OrtValue.ortvalue_from_numpy(buffer)  # wraps the array's memory, no copy
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_ortvalue_output(present, value)


#: (prompt lengths, new tokens per later step) the probe runs: a left-padded batch decoding, and one row
#: through a chunk of two tokens (GroupQueryAttention takes a chunk with a past in a batch of one)
_PROBES = (((5, 3), (1, 1)), ((5,), (2, 1)))


def shares_cache_buffer(model: Path, layout: CacheLayout, vocab_limit: int = 100) -> bool:
    """Whether `model` run with one buffer for past and present gives the logits and cache of its concatenating
    run, through every probe its concatenating run takes (at least the left-padded batch)."""
    from attnopt.runtime.onnxruntime import ort_module, session_options

    ort = ort_module()
    try:  # log level 4: a graph that cannot share fails the shared run, and that failure is the answer
        session = ort.InferenceSession(str(model), session_options(threads=1, log_level=4),
                                       providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - a graph this ONNX Runtime cannot load here is not proven to share
        return False
    rng = np.random.default_rng(0)
    verdicts = [_agrees(session, layout, [rng.integers(1, vocab_limit, size=n).tolist() for n in lengths],
                        [rng.integers(1, vocab_limit, size=(len(lengths), k)) for k in steps])
                for lengths, steps in _PROBES]
    return verdicts[0] is True and all(v is not False for v in verdicts)


def _agrees(session: Any, layout: CacheLayout, prompts: list[list[int]], steps: list[np.ndarray]) -> bool | None:
    """Whether the shared run matches the concatenating one at every kept position, step by step; None when
    the concatenating run itself refuses these steps (not something the graph does)."""
    from attnopt.generation.loop import first_feeds, left_padded, next_feeds
    from attnopt.runtime.onnxruntime import as_declared, float_input_types

    names, declared = {i.name for i in session.get_inputs()}, float_input_types(session)
    outputs = [o.name for o in session.get_outputs()]
    ids, mask = left_padded(prompts, 0)
    concat_feeds = shared_feeds = first_feeds(ids, mask, layout)
    shared = SharedCacheStep(session, layout, capacity=16)
    for index in range(len(steps) + 1):
        if index:
            concat_feeds = next_feeds(concat_feeds, concat, steps[index - 1], layout)
            shared_feeds = next_feeds(shared_feeds, mine, steps[index - 1], layout)
        try:
            fed = as_declared({k: v for k, v in concat_feeds.items() if k in names}, declared)
            concat = dict(zip(outputs, session.run(None, fed)))
        except Exception:  # noqa: BLE001 - the graph does not take these steps at all
            return None
        try:
            mine = shared(shared_feeds)
        except Exception:  # noqa: BLE001 - ONNX Runtime refusing the shared buffers means: no sharing
            return False
        kept = concat_feeds["attention_mask"][:, -concat["logits"].shape[1]:].astype(bool)
        if not np.allclose(mine["logits"][kept], concat["logits"][kept], rtol=1e-3, atol=1e-4):
            return False
        keys = concat_feeds["attention_mask"].astype(bool)
        for present in layout.present_names():
            if mine[present].shape != concat[present].shape or not np.allclose(
                    np.moveaxis(mine[present], 2, 1)[keys], np.moveaxis(concat[present], 2, 1)[keys],
                    rtol=1e-3, atol=1e-4):
                return False
    return True
