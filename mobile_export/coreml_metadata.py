"""The description of a Core ML package's root model: stamped with version, author, license and keys, read back.

Only the spec's metadata changes: the program and the weights stay byte for byte the bundle's.
coremltools is imported only here, inside the functions (it imports TensorFlow unless hidden first:
`edgebase.deps.import_coremltools`).
"""

from __future__ import annotations

import json
from pathlib import Path

from mobile_export.ios import Stamped


def _root_model(package: Path) -> Path:
    document = json.loads((package / "Manifest.json").read_text())
    entry = document["itemInfoEntries"][document["rootModelIdentifier"]]
    return package / "Data" / entry["path"]


def stamp_metadata(
    package: Path, *, version: str, author: str, license_text: str, extra: dict[str, str]
) -> Stamped | None:
    """Write version, author, license and `extra` into the package's model description; None without coremltools.

    Only the spec's metadata changes: the program and the weights are byte for byte the bundle's.
    """
    from edgebase.deps import is_available

    if not is_available("coremltools"):
        return None
    from edgebase.deps import import_coremltools

    import_coremltools()
    from coremltools.proto import Model_pb2

    path = _root_model(package)
    spec = Model_pb2.Model()
    spec.ParseFromString(path.read_bytes())
    metadata = spec.description.metadata
    metadata.versionString = version
    if author:
        metadata.author = author
    if license_text:
        metadata.license = license_text
    for key, value in extra.items():
        metadata.userDefined[key] = value
    path.write_bytes(spec.SerializeToString())
    check = Model_pb2.Model()
    check.ParseFromString(path.read_bytes())
    if check.description.metadata.versionString != version:  # a bug here, not the user's input
        raise RuntimeError(f"the metadata of {package.name} did not read back")
    return Stamped(version=version, author=metadata.author, license=metadata.license)


def read_metadata(package: Path) -> dict[str, str]:
    """The exported package's metadata: version, author, license, description and the user-defined keys."""
    from edgebase.deps import import_coremltools

    import_coremltools()
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(_root_model(package).read_bytes())
    metadata = spec.description.metadata
    return {
        "version": metadata.versionString,
        "author": metadata.author,
        "license": metadata.license,
        "description": metadata.shortDescription,
        **dict(metadata.userDefined),
    }
