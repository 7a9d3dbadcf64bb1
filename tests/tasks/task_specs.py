"""Specs of the task-kind tests (a module of its own: tests never import a conftest)."""

MEMORY_SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
source:
  checkpoint: {name}/checkpoint
  task: feature-extraction
embedding:
  calibration: {name}/calibration.jsonl
  parity: {{min_cosine: 0.99, top_k: 5, min_topk_agreement: 0.8}}
backends:
  pytorch: {{}}
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
"""

VISION_SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
source:
  checkpoint: {name}/checkpoint
  task: image-classification
labels:
  order: {name}/label_order.json
  fields: {name}/registry_label_fields.json
thresholds:
  strategy: fixed
  default: 0.4
  calibration: {name}/calibration.jsonl
backends:
  pytorch: {{}}
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
    parity: {{atol: 1.0e-4, max_decision_flip_rate: 0.05}}
"""

ANALYST_SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
source:
  checkpoint: {name}/checkpoint
  task: text-generation
generation:
  calibration: {name}/prompts.jsonl
  steps: 6
  parity: {{min_agreement: 0.9, max_first_logit_diff: 1.0}}
  serving: {{served_model_id: analyst, launch_args: [--max-model-len, "256"]}}
backends:
  pytorch: {{}}
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true, exclude_nodes: [/lm_head/MatMul]}}
publish:
  store: {{root: "${{MODEL_STORE_ROOT}}", agent: "analyst-{{backend}}"}}
registry:
  roles: [analyst]
"""

TAGGER_SPEC = """\
apiVersion: modelkiln/v1
kind: Bundle
name: {name}
version: "1.0.0"
source:
  checkpoint: {name}/checkpoint
  task: token-classification
labels:
  order: {name}/label_order.json
  fields: {name}/registry_label_fields.json
entities:
  calibration: {name}/calibration.jsonl
  parity: {{min_agreement: 0.85}}
backends:
  pytorch: {{}}
  onnx:
    quantize: {{mode: dynamic, weight_type: int8, per_channel: true}}
    parity: {{atol: 1.0e-4}}
"""
