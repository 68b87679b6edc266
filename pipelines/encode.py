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

from mixlm.pipelines.elements import RECORD, Outcome, ParsedEvent

_LOADED: dict[tuple[str, str | None], object] = {}
_LOADED_LOCK = threading.Lock()


def load_encoder(bundle_dir: str, device: str | None):
    from mixlm.encoders import ItemEncoder

    key = (bundle_dir, device)
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = ItemEncoder.from_bundle(bundle_dir, device=device)
        return _LOADED[key]


class ItemEncoderHandler(ModelHandler[ParsedEvent | Outcome, Outcome, object]):
    def __init__(self, bundle_dir: str, *, job_id: str, device: str | None = None, max_batch_items: int = 256):
        super().__init__()
        self.bundle_dir = bundle_dir
        self.job_id = job_id
        self.device = device
        self.max_batch_items = max_batch_items

    def load_model(self):
        return load_encoder(self.bundle_dir, self.device)

    def run_inference(self, batch: Sequence[ParsedEvent | Outcome], model, inference_args=None) -> Iterable[Outcome]:
        """Encode the batch's undecided events in one call; decided outcomes pass through in order."""
        pending = [element for element in batch if isinstance(element, ParsedEvent)]
        records = iter(model.encode_events([p.event for p in pending], job_id=self.job_id, encoded_at=time.time())
                       if pending else [])
        for element in batch:
            if isinstance(element, Outcome):
                yield element
            else:
                yield Outcome(RECORD, element.source, element.position, record=next(records), encoded=True)

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.max_batch_items}
