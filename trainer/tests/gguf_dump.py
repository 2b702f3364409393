"""Dump a GGUF file's metadata and tensor table as JSON with llama.cpp's own
Python reader (the `gguf` package from PyPI): an independent check of what
reckon-train export writes."""
import json
import sys

from gguf import GGUFReader, GGUFValueType


def value(field):
    t = field.types[0]
    if t == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    if t == GGUFValueType.ARRAY:
        if field.types[1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [scalar(field.parts[i][0], field.types[1]) for i in field.data]
    return scalar(field.parts[field.data[0]][0], t)


def scalar(x, t):
    if t == GGUFValueType.BOOL:
        return bool(x)
    if t in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        return float(x)
    return int(x)


reader = GGUFReader(sys.argv[1])
meta = {}
for name, field in reader.fields.items():
    if name.startswith("GGUF."):
        continue  # the reader's own header pseudo-fields
    meta[name] = value(field)
tensors = [
    {"name": t.name, "type": t.tensor_type.name, "shape": [int(d) for d in t.shape]}
    for t in reader.tensors
]
json.dump({"metadata": meta, "tensors": tensors}, sys.stdout)
