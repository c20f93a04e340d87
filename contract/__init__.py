"""The HaN-Seg algorithm contract: label table, input discovery, image I/O and user-facing errors.

See ``../shared/docs/CONTRACT.md`` for the facts this package encodes.
"""
