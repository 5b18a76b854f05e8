"""Caption refinement: captioners, CLAP scoring, filtering and merging."""
