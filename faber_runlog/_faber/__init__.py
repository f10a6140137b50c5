"""FABER compatibility: import and export of FABER run folders."""
