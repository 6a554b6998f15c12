"""training.gguf_file, the quick GGUF reader, against the gguf package's own reader."""
from __future__ import annotations


def test_the_quick_reader_reads_what_ggufreader_reads():
    """training.gguf_file against the gguf package's own reader, on the packaged SmolLM2 file
    (Q4_1, Q8_0 and F32 tensors): every field with its types, every tensor's shape and values."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, dequantize

    from core.assets import smollm2_gguf
    from training.gguf_file import read_gguf

    quick, reference = read_gguf(smollm2_gguf()), GGUFReader(smollm2_gguf())
    fields = {f.name: f for f in reference.fields.values() if not f.name.startswith("GGUF.")}
    assert fields.keys() == quick.fields.keys()
    for key, field in fields.items():
        item_kind = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        assert quick.fields[key] == (field.contents(), field.types[0], item_kind), key
    assert [t.name for t in reference.tensors] == list(quick.tensors)
    for tensor in reference.tensors:
        ours = quick.tensors[tensor.name]
        assert (ours.shape, ours.kind) == (list(tensor.shape), tensor.tensor_type), tensor.name
        assert np.array_equal(dequantize(ours.data, ours.kind).ravel(),
                              dequantize(tensor.data, tensor.tensor_type).ravel()), tensor.name
