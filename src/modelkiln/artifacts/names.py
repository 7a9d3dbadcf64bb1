"""The file names of a bundle, named once. Serving code reads these names; stages write them.

    bundle.tar.gz + manifest.json          what is published (dist/<name>/<version>/<backend>/)
    bundle.sig, provenance.sigstore.json   beside them when signed: the signature over the
                                           manifest and the signed build provenance
    inside the bundle:
      config.json, model.safetensors       the PyTorch model (safetensors only); a sharded
                                           checkpoint keeps its model-0000i-of-0000N.safetensors
                                           shards and model.safetensors.index.json instead
      tokenizer/                           the fast tokenizer
      label_order.json                     the model's output order
      registry_label_fields.json           one entry per label
      thresholds.json                      per-label decision cuts
      registry_model_int8.onnx             the ONNX bundle's model
      engines/sm<cc>/model.plan            the TensorRT bundle's engine for one GPU architecture,
      engines/sm<cc>/engine.json           and the key it was built for (the bootstrap matches it)
      model_card.md                        the human-readable card
      model_card_thresholds.svg            its chart: per-label threshold and F1
      manifest.json                        every file's size and sha256
"""
from __future__ import annotations

ARCHIVE = "bundle.tar.gz"
MANIFEST = "manifest.json"
SIGNATURE = "bundle.sig"
PROVENANCE = "provenance.sigstore.json"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = "pytorch_model.bin"
PICKLE_WEIGHTS_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_DIR = "tokenizer"
TOKENIZER_CONFIG = "tokenizer_config.json"  # in TOKENIZER_DIR: model_input_names for the card
LABEL_ORDER = "label_order.json"
LABEL_FIELDS = "registry_label_fields.json"
THRESHOLDS = "thresholds.json"
THRESHOLD_METRICS = "threshold_metrics.json"
ONNX_INT8 = "registry_model_int8.onnx"
ENGINES_DIR = "engines"
ENGINE_PLAN = "model.plan"
ENGINE_SIDECAR = "engine.json"
MODEL_CARD = "model_card.md"
CARD_CHART = "model_card_thresholds.svg"
