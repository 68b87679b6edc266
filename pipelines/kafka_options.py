"""Kafka client settings from the command line: security (TLS, SASL) and tuning, in kafka-python's names.

``mixlm stream`` and ``mixlm produce`` take ``--kafka-config FILE`` (a properties file of
``name=value`` lines; ``#`` and ``!`` start comments) and repeated ``--kafka-option name=value``
(later ones win over earlier ones and over the file). Names are kafka-python's
(``security_protocol``, ``sasl_mechanism``, ``ssl_cafile``, ``session_timeout_ms``, ...); the
Java spelling with dots (``security.protocol``) is accepted for the names the two share. A
value is typed after kafka-python's default for the name (``true``/``false``, integers).

A value can name a secret instead of holding it: ``${env:NAME}`` (an environment variable) or
``${file:PATH}`` (a file's content, without its trailing newline). References are resolved only
where a client is built, so the secret is never part of a pickled pipeline, a job manifest or a
log line; ``redacted()`` is what manifests and logs show. Names that look secret (``password``,
``secret``, ``token``, ``credential``) are always shown as ``<redacted>``, references or not.

Topic names are checked against Kafka's rule (``topic_name``) before any client is built.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mixlm.schemas.errors import InputError

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"password|secret|token|credential", re.IGNORECASE)
_REFERENCE = re.compile(r"^\$\{(env|file):(.+)\}$")
# Set by mixlm itself: offsets are committed only after the store's write is durable, the
# consumer group and the servers have their own flags, and records are bytes as they are.
MANAGED = {
    "bootstrap_servers": "use --bootstrap-servers",
    "group_id": "use --group",
    "enable_auto_commit": "offsets are committed by mixlm, only after the store's write is durable",
    "key_deserializer": "records are read as bytes",
    "value_deserializer": "records are read as bytes",
    "key_serializer": "records are sent as bytes",
    "value_serializer": "records are sent as bytes",
    "batch_size": "use --batch-size (mixlm produce)",
}
_INT_WHEN_NONE = {"receive_buffer_bytes", "send_buffer_bytes"}
_OBJECTS = {"ssl_context", "sasl_oauth_token_provider"}  # None by default, but Python objects when set


def _defaults() -> dict[str, dict[str, Any]]:
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    return {"consumer": dict(KafkaConsumer.DEFAULT_CONFIG), "producer": dict(KafkaProducer.DEFAULT_CONFIG),
            "admin": dict(KafkaAdminClient.DEFAULT_CONFIG)}


def _convert(name: str, text: str, default: Any) -> Any:
    """``text`` as the type of kafka-python's default for ``name``; InputError when it cannot be."""
    text = text.strip()
    shown = REDACTED if is_secret(name) else repr(text)
    if isinstance(default, bool):
        if text.lower() in ("true", "yes", "1"):
            return True
        if text.lower() in ("false", "no", "0"):
            return False
        raise InputError(f"kafka option {name}: expected true or false, got {shown}")
    if name == "acks" and text.lower() == "all":
        return "all"
    if isinstance(default, (int, float)) or (default is None and name in _INT_WHEN_NONE):
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            raise InputError(f"kafka option {name}: expected a number, got {shown}") from None
    if name == "api_version":
        try:
            return tuple(int(part) for part in text.split("."))
        except ValueError:
            raise InputError(f"kafka option api_version: expected a version like 2.8.0, got {shown}") from None
    if (default is None and name not in _OBJECTS) or isinstance(default, str):
        return text
    raise InputError(f"kafka option {name} takes a Python object; it cannot be set from the command line")


def is_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


@dataclass(frozen=True)
class KafkaOptions:
    """Client settings as given: values typed, secret references kept unresolved until ``for_client``."""

    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, options: Iterable[str] = (), config_file: str | Path | None = None) -> KafkaOptions:
        """The file's settings, then each ``name=value`` of ``options``; InputError on any bad one."""
        pairs: list[tuple[str, str, str]] = []  # (name, value, where it came from)
        if config_file is not None:
            path = Path(config_file)
            try:
                text = path.read_text()
            except OSError as exc:
                raise InputError(f"cannot read the Kafka config {path}: {exc.strerror or exc}") from None
            for number, line in enumerate(text.splitlines(), start=1):
                line = line.strip()
                if not line or line[0] in "#!":
                    continue
                name, sep, value = _split(line)
                if not sep:  # not quoted: a line of a config file may be a secret pasted on its own
                    raise InputError(f"{path}:{number}: expected name=value")
                pairs.append((name, value, f"{path}:{number}"))
        for option in options:
            name, sep, value = _split(option)
            if not sep:
                raise InputError("--kafka-option takes name=value (the value may be ${env:NAME} or ${file:PATH})")
            pairs.append((name, value, "--kafka-option"))
        defaults = _defaults()
        known = {name: value for config in defaults.values() for name, value in config.items()}
        values: dict[str, Any] = {}
        for raw_name, value, where in pairs:
            name = raw_name.strip().lower().replace(".", "_").replace("-", "_")
            if name in MANAGED:
                raise InputError(f"{where}: kafka option {name} is set by mixlm ({MANAGED[name]})")
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise InputError(f"{where}: {raw_name.strip()!r} is not a kafka-python client setting{hint}")
            value = value.strip()
            values[name] = value if _REFERENCE.match(value) else _convert(name, value, known[name])
        return cls(values)

    def for_client(self, kind: str, **defaults: Any) -> dict[str, Any]:
        """Keyword arguments for a ``KafkaConsumer`` / ``KafkaProducer`` / ``KafkaAdminClient`` (``kind``):
        ``defaults``, overridden by the options that client takes, secret references resolved."""
        accepted = _defaults()[kind]
        config = dict(defaults)
        for name, value in self.values.items():
            if name in accepted:
                config[name] = self._resolve(name, value, accepted[name])
        return config

    def redacted(self) -> dict[str, Any]:
        """The settings as a manifest or a log may show them: no secret values."""
        shown: dict[str, Any] = {}
        for name, value in sorted(self.values.items()):
            if is_secret(name):
                shown[name] = REDACTED
            elif isinstance(value, tuple):
                shown[name] = ".".join(str(part) for part in value)
            else:
                shown[name] = value  # references show as ${env:NAME} / ${file:PATH}, never resolved
        return shown

    def get(self, name: str, default: Any = None) -> Any:
        """An option's value as given (references unresolved)."""
        return self.values.get(name, default)

    def __repr__(self) -> str:
        return f"KafkaOptions({self.redacted()!r})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.values)

    @staticmethod
    def _resolve(name: str, value: Any, default: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = _REFERENCE.match(value)
        if not match:
            return value
        kind, target = match.groups()
        if kind == "env":
            if target not in os.environ:
                raise InputError(f"kafka option {name}: environment variable {target} is not set")
            text = os.environ[target]
        else:
            try:
                text = Path(target).expanduser().read_text()
            except OSError as exc:
                raise InputError(f"kafka option {name}: cannot read {target}: {exc.strerror or exc}") from None
            text = text.rstrip("\r\n")
        return _convert(name, text, default)


def _split(text: str) -> tuple[str, str, str]:
    """``name=value`` or, in properties files, ``name: value``."""
    index = min((i for i in (text.find("="), text.find(":")) if i >= 0), default=-1)
    if index < 0:
        return text, "", ""
    return text[:index], text[index], text[index + 1:]



def kafka_client_options(func):
    """The click options ``--kafka-config FILE`` and repeated ``--kafka-option NAME=VALUE``."""
    import click

    func = click.option(
        "--kafka-option", "kafka_option", multiple=True, metavar="NAME=VALUE",
        help="a kafka-python client setting (security_protocol, sasl_mechanism, ssl_cafile, session_timeout_ms, "
             "...), repeatable; a secret as ${env:NAME} or ${file:PATH}")(func)
    func = click.option(
        "--kafka-config", type=click.Path(dir_okay=False), default=None, envvar="MIXLM_KAFKA_CONFIG",
        show_envvar=True, help="properties file of kafka-python settings (name=value lines); --kafka-option wins")(func)
    return func


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def topic_name(ctx, param, value: str | None) -> str | None:
    """click callback: a topic name Kafka accepts, checked before any broker is asked (a broker's refusal
    reads as an outage)."""
    import click

    if value is not None and (not _TOPIC.fullmatch(value) or value in (".", "..")):
        raise click.BadParameter(f"{value!r} is not a Kafka topic name: 1 to 249 letters, digits, '.', '_' "
                                 "or '-', and not '.' or '..'")
    return value
