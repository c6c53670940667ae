#!/usr/bin/env python3
"""Dumps a GGUF file with llama.cpp's own gguf-py, the independent reader loft's gguf tests compare against.

  gguf_py_dump.py FILE.gguf OUT_DIR
      OUT_DIR/index.json: {"alignment", "data_offset", "metadata": [{"key", "type", "elem"?, "value"}],
                           "tensors": [{"name", "shape" (ne order), "type", "n_bytes", "data_offset", "file"}]}
      OUT_DIR/<i>.f32: tensor i dequantized by gguf.quants.dequantize, raw little-endian f32 ("file" is null
      when gguf-py cannot dequantize the type). Type ids are GGUF's numbers; f32/f64 metadata values are their
      IEEE bit patterns as integers so that the comparison is exact.
  gguf_py_dump.py --quantize TYPE_ID ROW_LEN IN.f32 OUT.bin
      quantizes raw little-endian f32 rows with gguf.quants.quantize (numpy ports of ggml's reference quantizers).
  gguf_py_dump.py --names HF_NAME...
      prints {"keys": [every key template in gguf.Keys], "hf_to_gguf": {HF_NAME: gguf name or null}} using
      gguf.TensorNameMap for llama (qwen2, qwen3), and "hf_to_gguf_gemma3" from gemma3's map.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGUFValueType as VT


def scalar(part, t):
    if t == VT.STRING:
        return bytes(part).decode("utf-8")
    if t == VT.FLOAT32:
        return int(np.asarray(part).view(np.uint32)[0])
    if t == VT.FLOAT64:
        return int(np.asarray(part).view(np.uint64)[0])
    if t == VT.BOOL:
        return bool(part[0])
    return int(part[0])


def field_json(field):
    t = field.types[0]
    if t == VT.ARRAY:
        elem = field.types[-1] if len(field.types) > 1 else None
        if elem == VT.ARRAY:
            raise SystemExit(f"{field.name}: nested arrays are not dumped (gguf-py's reader flattens them)")
        values = [scalar(field.parts[i], elem) for i in field.data] if elem is not None else []
        return {"key": field.name, "type": int(t), "elem": None if elem is None else int(elem), "value": values}
    return {"key": field.name, "type": int(t), "value": scalar(field.parts[field.data[0]], t)}


def dump(path, out_dir):
    reader = gguf.GGUFReader(path)
    os.makedirs(out_dir, exist_ok=True)
    metadata = [field_json(f) for f in reader.fields.values() if not f.name.startswith("GGUF.")]
    tensors = []
    for i, t in enumerate(reader.tensors):
        entry = {
            "name": t.name,
            "shape": [int(d) for d in t.shape],
            "type": int(t.tensor_type),
            "n_bytes": int(t.n_bytes),
            "data_offset": int(t.data_offset),
            "file": None,
        }
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            values = None
        if values is not None:
            entry["file"] = f"{i}.f32"
            np.ascontiguousarray(values, dtype="<f4").reshape(-1).tofile(os.path.join(out_dir, entry["file"]))
        tensors.append(entry)
    index = {"alignment": int(reader.alignment), "data_offset": int(reader.data_offset),
             "metadata": metadata, "tensors": tensors}
    with open(os.path.join(out_dir, "index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, ensure_ascii=False)


def names(hf_names):
    keys = []

    def walk(cls):
        for k, v in vars(cls).items():
            if isinstance(v, str) and not k.startswith("_"):
                keys.append(v)
            elif isinstance(v, type):
                walk(v)

    walk(gguf.Keys)
    # The Llama names, then what Qwen2 (biases) and Qwen3 (q/k norms) add.
    tmaps = [gguf.get_tensor_name_map(a, 64) for a in (gguf.MODEL_ARCH.LLAMA, gguf.MODEL_ARCH.QWEN2, gguf.MODEL_ARCH.QWEN3)]

    def name(hf):
        found = (t.get_name(hf, try_suffixes=(".weight", ".bias")) for t in tmaps)
        return next((g for g in found if g is not None), None)

    mapping = {hf: name(hf) for hf in hf_names}
    # Gemma 3's own map (its post_attention_layernorm is not Llama's).
    gemma3 = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, 64)
    mapping_gemma3 = {hf: gemma3.get_name(hf, try_suffixes=(".weight", ".bias")) for hf in hf_names}
    json.dump({"keys": keys, "hf_to_gguf": mapping, "hf_to_gguf_gemma3": mapping_gemma3}, sys.stdout)


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--quantize":
        qtype, row_len = gguf.GGMLQuantizationType(int(sys.argv[2])), int(sys.argv[3])
        rows = np.fromfile(sys.argv[4], dtype="<f4").reshape(-1, row_len)
        gguf.quants.quantize(rows, qtype).tofile(sys.argv[5])
    elif len(sys.argv) >= 2 and sys.argv[1] == "--names":
        names(sys.argv[2:])
    elif len(sys.argv) == 3:
        dump(sys.argv[1], sys.argv[2])
    else:
        raise SystemExit(__doc__)
