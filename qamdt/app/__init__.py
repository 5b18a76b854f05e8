"""The web app of ``qamdt app``: generation, scoring and dataset browsing in the browser."""
