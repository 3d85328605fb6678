"""A named entry in a .tflite file's own metadata table: written and read back with the schema's object API.

The flatbuffer is rewritten with the generated schema ai-edge-litert ships (as TFLite's own
flatbuffer tools do); tflite-support's metadata writer is not used because it pins protobuf 3.
`edgectl export android` stores model-info there, so a model file that travels alone still says how
to feed it.
"""

from __future__ import annotations

from mobile_export.common import UserInputError

METADATA_NAME = "edgectl_model_info"


def metadata_tools_available() -> bool:
    from edgebase.deps import is_available

    return is_available("ai_edge_litert") and is_available("flatbuffers")


class _AlignedBuffer:
    """Packs a BufferT with its data 16-byte aligned, as the schema's `force_align: 16` asks.

    The generated Python object API ignores force_align; TensorFlow's converter
    honours it, and constant tensors read in place from a memory-mapped model
    keep the alignment they were written with.
    """

    def __init__(self, buffer) -> None:
        self.buffer = buffer

    def Pack(self, builder):  # the name the flatbuffers object API calls
        from ai_edge_litert import schema_py_generated as schema

        data = None
        if self.buffer.data is not None:
            payload = bytes(memoryview(self.buffer.data).cast("B"))
            builder.Prep(16, len(payload))
            data = builder.CreateByteVector(payload)
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        schema.BufferAddOffset(builder, self.buffer.offset)
        schema.BufferAddSize(builder, self.buffer.size)
        return schema.BufferEnd(builder)


def embed_metadata(model: bytes, payload: bytes, name: str = METADATA_NAME) -> bytes:
    """`model` with `payload` in its metadata table under `name` (replacing an entry of that name).

    Tensors, operators and signatures are packed back unchanged; the model
    gives the same outputs. Refuses bytes that are not a TFLite flatbuffer.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    if len(model) < 8 or model[4:8] != b"TFL3":
        raise UserInputError(
            "an artifact marked tflite is not a TFLite flatbuffer", hint="rebuild the bundle"
        )
    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    kept = [m for m in (tree.metadata or []) if _text(m.name) != name]
    buffer = schema.BufferT()
    buffer.data = bytearray(payload)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(tree.buffers) - 1
    tree.metadata = [*kept, entry]
    tree.buffers = [_AlignedBuffer(b) for b in tree.buffers]
    builder = flatbuffers.Builder(len(model) + len(payload) + 1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    result = bytes(builder.Output())
    if read_metadata(result, name) != payload:  # a bug here, not the user's input: no UserInputError
        raise RuntimeError(f"metadata {name!r} did not read back from the rewritten model")
    return result


def read_metadata(model: bytes, name: str = METADATA_NAME) -> bytes | None:
    """The bytes stored under `name` in a TFLite model's metadata table, None when absent."""
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    for index in range(root.MetadataLength()):
        entry = root.Metadata(index)
        if _text(entry.Name()) == name:
            buffer = root.Buffers(entry.Buffer())
            if buffer.Offset():  # data stored after the flatbuffer (models over 2 GB)
                return bytes(model[buffer.Offset() : buffer.Offset() + buffer.Size()])
            return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    return None


def _text(value) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
