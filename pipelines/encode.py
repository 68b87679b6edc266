"""The encoder LLM as a Beam ``ModelHandler`` (the RunInference contract).

RunInference batches elements and shares one loaded model per process across bundles;
the module-level cache also keeps it across pipeline runs in one process (a streaming
consumer that restarts its pipeline, or tests). Token-budget batching happens inside
the encoder, so RunInference's batches only bound how many items are in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence

from apache_beam.ml.inference.base import ModelHandler

from mixlm.pipelines.elements import RECORD, Outcome, ParsedEvent, RawEvent
from mixlm.pipelines.transforms import dead_outcome
from mixlm.schemas.item_event import one_line

_LOADED: dict[tuple[str, str | None], object] = {}
_LOADED_LOCK = threading.Lock()


def load_encoder(bundle_dir: str, device: str | None):
    from mixlm.encoders import ItemEncoder

    key = (bundle_dir, device)
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = ItemEncoder.from_bundle(bundle_dir, device=device)
        return _LOADED[key]


def _systemic(exc: Exception) -> bool:
    """Out of memory or a failed accelerator (``AcceleratorError`` from torch 2.8): the machine's fault."""
    import torch  # loaded with the model already

    return isinstance(exc, tuple(kind for kind in (MemoryError, torch.cuda.OutOfMemoryError,
                                                   getattr(torch, "AcceleratorError", None)) if kind))


class ItemEncoderHandler(ModelHandler[ParsedEvent | Outcome, Outcome, object]):
    def __init__(self, bundle_dir: str, *, job_id: str, device: str | None = None, max_batch_items: int = 256,
                 torch_threads: int | None = None):
        """``torch_threads``: set torch's intra-op threads in the worker that loads the model (default: leave it)."""
        super().__init__()
        self.bundle_dir = bundle_dir
        self.job_id = job_id
        self.device = device
        self.max_batch_items = max_batch_items
        self.torch_threads = torch_threads

    def load_model(self):
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        return load_encoder(self.bundle_dir, self.device)

    def run_inference(self, batch: Sequence[ParsedEvent | Outcome], model, inference_args=None) -> Iterable[Outcome]:
        """Encode the batch's undecided events in one call; decided outcomes pass through in order."""
        pending = [element for element in batch if isinstance(element, ParsedEvent)]
        encoded = iter(self._encode(pending, model))
        for element in batch:
            yield element if isinstance(element, Outcome) else next(encoded)

    def _encode(self, pending: list[ParsedEvent], model) -> list[Outcome]:
        """One call for all; if it fails, one call per event, and those that fail alone are dead letters.

        A systemic error (out of memory, the accelerator failed) is not the item's: it fails the job.
        """
        if not pending:
            return []
        try:
            records = model.encode_events([p.event for p in pending], job_id=self.job_id, encoded_at=time.time())
        except Exception as exc:
            if _systemic(exc):
                raise
            if len(pending) > 1:
                return [outcome for parsed in pending for outcome in self._encode([parsed], model)]
            parsed = pending[0]
            raw = RawEvent(parsed.event.to_json().encode(), parsed.source, position=parsed.position)
            return [dead_outcome(raw, f"encoding failed: {one_line(exc)}")]
        return [Outcome(RECORD, parsed.source, parsed.position, record=record, encoded=True)
                for parsed, record in zip(pending, records, strict=True)]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_items}
