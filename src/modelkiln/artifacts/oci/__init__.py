"""OCI images and artifacts on disk: media types and descriptors (`media`), deterministic layers
(`layers`), the image layout directory (`layout`), and the manifests modelkiln builds (`build`)."""
