"""OCI tests get one real `docker-registry` per session and a synthetic base image pushed to it
by code: the fixtures `oci_registry` and `base_ref` live in tests/conftest.py, shared with the
serving-image tests (tests/onnx/test_serving_image.py)."""
