"""Reading data into task examples: sources and formats, splits, overlap, tokenising, the pre-flight report."""
