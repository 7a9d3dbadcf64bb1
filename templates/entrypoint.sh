#!/bin/sh
# Entrypoint of a modelkiln serving image (from modelkiln's templates/entrypoint.sh).
# The bundle is baked in under $REGISTRY_BUNDLE_DIR and the image's environment already holds the
# REGISTRY_* paths `kiln bootstrap` would export, so the serving command reads them as usual.
# REGISTRY_VERIFY=full re-hashes every bundle file against its manifest.json before starting.
set -eu
if [ "${REGISTRY_VERIFY:-stat}" = "full" ]; then
    python3 -m modelkiln.runtime verify "$REGISTRY_BUNDLE_DIR"
fi
if [ "$#" -eq 0 ]; then
    # No command given: say what this image serves and where its files are.
    env | grep -E '^(MODEL_|REGISTRY_)' | sort
    exit 0
fi
exec "$@"
