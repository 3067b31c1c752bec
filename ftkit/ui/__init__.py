"""`ftkit ui`: the web dashboard over run directories (see docs/ui.md)."""
