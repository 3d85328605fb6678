"""The two shapes of a name, said once: what the manifest, the registry, the agent and the targets accept.

- a **name** (model, key, bundle name): letters, digits, `.`, `_`, `-`, starting with a letter or
  digit, at most 128 characters; safe as a file name, a URL segment and an MQTT topic level.
- a **slug** (device, target profile): lower-case letters, digits and `-`, at most 63 characters;
  a DNS label, since it becomes an MQTT client id, a certificate's common name and a file name.

Python checks go through `is_name` / `is_slug`, which match the whole string (a `$` anchor would let
a trailing newline through). The `*_PATTERN` strings are for pydantic and FastAPI, whose regex
engine reads `$` as the end of the text.
"""

from __future__ import annotations

import re

NAME_MAX = 128
SLUG_MAX = 63
FILE_NAME_MAX = 255  # a bundle's folder: a name, its version and suffixes

NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}$"
FILE_NAME_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{FILE_NAME_MAX - 1}}}$"
SLUG_PATTERN = rf"^[a-z0-9][a-z0-9-]{{0,{SLUG_MAX - 1}}}$"

_NAME = re.compile(NAME_PATTERN[1:-1])
_FILE_NAME = re.compile(FILE_NAME_PATTERN[1:-1])
_SLUG = re.compile(SLUG_PATTERN[1:-1])


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def is_file_name(value: object) -> bool:
    return isinstance(value, str) and _FILE_NAME.fullmatch(value) is not None


def is_slug(value: object) -> bool:
    return isinstance(value, str) and _SLUG.fullmatch(value) is not None
