#!/bin/sh
# Entrypoint of a modelkiln serving image (from modelkiln's templates/entrypoint.sh).
# The bundle is baked in under $REGISTRY_BUNDLE_DIR and the image's environment already holds the
# REGISTRY_* paths `kiln bootstrap` would export, so the serving command reads them as usual.
# REGISTRY_VERIFY=full re-hashes every bundle file against its manifest.json before starting.
#   predict       answer JSON lines on stdin ({"text": ...}) with labels and scores, one per line
#   verify        re-hash the bundle and exit (2 on drift)
#   (nothing)     print what this image serves and where its files are
#   anything else is run as a command
set -eu
if [ "${REGISTRY_VERIFY:-stat}" = "full" ]; then
    python3 -m modelkiln.runtime verify "$REGISTRY_BUNDLE_DIR"
fi
if [ "$#" -eq 0 ]; then
    env | grep -E '^(MODEL_|REGISTRY_)' | sort
    exit 0
fi
case "$1" in
    predict) shift; exec python3 -m modelkiln.runtime predict "$@" ;;
    verify) exec python3 -m modelkiln.runtime verify "$REGISTRY_BUNDLE_DIR" ;;
esac
exec "$@"
