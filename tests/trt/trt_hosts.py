"""Host facts the TensorRT tests pretend to run on."""
from __future__ import annotations

from modelkiln.artifacts.engine_key import HostFacts

H200 = HostFacts("9.0", "NVIDIA H200", "10.3.0", "cuda12", "linux-x86_64")
A100 = HostFacts("8.0", "NVIDIA A100-SXM4-80GB", "10.3.0", "cuda12", "linux-x86_64")
NO_GPU = HostFacts(None, None, None, None, "linux-x86_64", "nvidia-smi not found")
GPU_NO_TRT = HostFacts("9.0", "NVIDIA H200", None, None, "linux-x86_64")
