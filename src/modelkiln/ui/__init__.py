"""`kiln ui`: the registry in a browser (the model loader runbook's GUI steps).

Pages: the registry (both layers, filters), an entry (store versions, files, thresholds chart,
parity, provenance, OCI references), compare; actions (Verify, Lock/Unlock, Import) call the same
registry functions as `kiln registry`. Flask is an optional extra (`modelkiln[ui]`), imported only
by `kiln ui`. `app.py` builds the application, `guard.py` says who may do what, `bundle.py` and
`rows.py` read, `chart.py` draws, `compare.py` lines two bundles up, `actions.py` acts.
"""
