"""``EncodeToStore``: the transforms both jobs share, from RawEvents to the store."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from mixlm.pipelines.encode import ItemEncoderHandler
from mixlm.pipelines.transforms import (
    ClassifyAgainstStore,
    ClassifyWithoutStore,
    ParseEvents,
    WriteOutcomes,
    WriteSnapshotOnly,
)


class EncodeToStore(beam.PTransform):
    """parse + validate -> classify against the store -> encode what changed -> one sink (a linear chain)."""

    def __init__(self, *, store_path: str, bundle_dir: str, encoder_id: str, job_id: str,
                 max_text_bytes: int, device: str | None = None, sink_options: dict | None = None,
                 snapshot_only_root: str | None = None, torch_threads: int | None = None):
        """With ``snapshot_only_root`` the job neither reads nor writes LMDB (distributed runners).

        ``torch_threads`` sets torch's threads in each worker process that loads the encoder.
        """
        super().__init__()
        self.snapshot_only_root = snapshot_only_root
        self.store_path = store_path
        self.bundle_dir = bundle_dir
        self.encoder_id = encoder_id
        self.job_id = job_id
        self.max_text_bytes = max_text_bytes
        self.device = device
        self.sink_options = sink_options or {}
        self.torch_threads = torch_threads

    def expand(self, raw_events):
        if self.snapshot_only_root:
            classify = ClassifyWithoutStore(self.encoder_id, self.job_id)
            sink = WriteSnapshotOnly(self.snapshot_only_root, self.job_id, self.encoder_id, **self.sink_options)
        else:
            classify = ClassifyAgainstStore(self.store_path, self.encoder_id, self.job_id)
            sink = WriteOutcomes(self.store_path, self.job_id, self.encoder_id, **self.sink_options)
        return (
            raw_events
            | "Parse" >> beam.ParDo(ParseEvents(self.max_text_bytes))
            | "Classify" >> beam.ParDo(classify)
            | "Encode" >> RunInference(ItemEncoderHandler(self.bundle_dir, job_id=self.job_id, device=self.device,
                                                           torch_threads=self.torch_threads))
            | "Write" >> beam.ParDo(sink)
        )
