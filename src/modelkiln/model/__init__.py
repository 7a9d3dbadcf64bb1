"""Plain validated data -> frozen dataclasses, plus the cross-field checks the schema cannot make."""
from .bundle import BrokenSpec, Bundle
from .convert import check_unique, to_bundle

__all__ = ["BrokenSpec", "Bundle", "check_unique", "to_bundle"]
