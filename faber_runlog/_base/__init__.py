"""The base: clock, ids, codecs, the converter, validation, progress, advice; imports only errors."""
